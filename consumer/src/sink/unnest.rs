//! Batches go to PostgreSQL as one array parameter per column, unnested into rows. The arrays'
//! names, types and parameter numbers come from one list per statement, so a statement and the
//! order of its binds are read off the same place instead of counted by hand.

/// An array parameter: the name its values take in the statement, and their SQL type.
pub(super) type Input = (&'static str, &'static str);

/// `UNNEST($1::t1[], $2::t2[], ...) AS u(n1, n2, ...)`, numbered in the order of `inputs`.
pub(super) fn unnest(inputs: &[Input]) -> String {
    let arrays: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(at, (_, kind))| format!("${}::{kind}[]", at + 1))
        .collect();
    let names: Vec<&str> = inputs.iter().map(|(name, _)| *name).collect();
    format!("UNNEST({}) AS u({})", arrays.join(", "), names.join(", "))
}

/// `inputs`' names, each after `prefix`, comma-separated: a column list or a select list.
pub(super) fn names(inputs: &[Input], prefix: &str) -> String {
    let names: Vec<String> = inputs
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect();
    names.join(", ")
}

/// The placeholder of the `nth` (from 0) scalar parameter bound after the arrays.
pub(super) fn scalar(inputs: &[Input], nth: usize) -> String {
    format!("${}", inputs.len() + nth + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_numbered_in_list_order_and_scalars_after_them() {
        let inputs = [("id", "text"), ("line", "int8")];
        assert_eq!(
            unnest(&inputs),
            "UNNEST($1::text[], $2::int8[]) AS u(id, line)"
        );
        assert_eq!(names(&inputs, "u."), "u.id, u.line");
        assert_eq!(scalar(&inputs, 0), "$3");
        assert_eq!(scalar(&inputs, 1), "$4");
    }
}
