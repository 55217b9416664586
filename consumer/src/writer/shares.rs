//! A batch shared among the writers: each partition whole and in order, rows balanced.

use crate::batch::Incoming;
use std::collections::HashMap;

/// The messages split among `writers` by partition, balancing rows: each partition whole, its
/// order kept. The partitions with the most rows are placed first, each with the least loaded.
pub(crate) fn shares_by_partition(messages: Vec<Incoming>, writers: usize) -> Vec<Vec<Incoming>> {
    let mut rows: HashMap<i32, usize> = HashMap::new();
    for message in &messages {
        *rows.entry(message.partition).or_default() += 1;
    }
    if writers <= 1 || rows.len() <= 1 {
        return vec![messages];
    }
    let mut by_rows: Vec<(i32, usize)> = rows.into_iter().collect();
    by_rows.sort_unstable_by_key(|&(partition, rows)| (std::cmp::Reverse(rows), partition));
    let mut load = vec![0usize; writers];
    let mut writer_of: HashMap<i32, usize> = HashMap::new();
    for (partition, rows) in by_rows {
        let least = (0..writers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[least] += rows;
        writer_of.insert(partition, least);
    }
    let mut shares: Vec<Vec<Incoming>> = load.iter().map(|&n| Vec::with_capacity(n)).collect();
    for message in messages {
        shares[writer_of[&message.partition]].push(message);
    }
    shares
}

pub(crate) fn partitions_of(messages: &[Incoming]) -> Vec<i32> {
    let mut partitions: Vec<i32> = messages.iter().map(|m| m.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn messages(partitions: &[(i32, usize)]) -> Vec<Incoming> {
        let mut messages = Vec::new();
        // Interleaved, as a batch arrives: one of each partition in turn.
        let longest = partitions.iter().map(|&(_, n)| n).max().unwrap_or(0);
        for offset in 0..longest {
            for &(partition, rows) in partitions {
                if offset < rows {
                    messages.push(Incoming {
                        partition,
                        offset: offset as i64,
                        key: None,
                        payload: None,
                        fixes: None,
                    });
                }
            }
        }
        messages
    }

    fn layout(shares: &[Vec<Incoming>]) -> Vec<Vec<(i32, usize)>> {
        shares
            .iter()
            .map(|share| {
                let mut rows: BTreeMap<i32, usize> = BTreeMap::new();
                for message in share {
                    *rows.entry(message.partition).or_default() += 1;
                }
                rows.into_iter().collect()
            })
            .collect()
    }

    #[test]
    fn each_partition_goes_whole_and_in_order_to_the_least_loaded_writer() {
        let shares = shares_by_partition(messages(&[(0, 50), (1, 30), (2, 25), (3, 10)]), 2);
        assert_eq!(
            layout(&shares),
            vec![vec![(0, 50), (3, 10)], vec![(1, 30), (2, 25)]]
        );
        for share in &shares {
            for partition in partitions_of(share) {
                let offsets: Vec<i64> = share
                    .iter()
                    .filter(|m| m.partition == partition)
                    .map(|m| m.offset)
                    .collect();
                assert!(offsets.windows(2).all(|pair| pair[0] + 1 == pair[1]));
            }
        }
    }

    #[test]
    fn one_writer_or_one_partition_takes_the_batch_as_it_is() {
        assert_eq!(
            layout(&shares_by_partition(messages(&[(0, 5), (1, 5)]), 1)),
            vec![vec![(0, 5), (1, 5)]]
        );
        assert_eq!(
            layout(&shares_by_partition(messages(&[(4, 7)]), 3)),
            vec![vec![(4, 7)]]
        );
        let shares = shares_by_partition(messages(&[(0, 3), (1, 3)]), 4);
        assert_eq!(shares.iter().filter(|share| !share.is_empty()).count(), 2);
    }
}
