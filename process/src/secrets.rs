//! Secrets out of logs: a database URL with its password replaced, in every form it takes.

/// The URL with every password form replaced, fit for a log line: `user:pass@`, a query
/// parameter whose name holds `password` (`?password=`, `sslpassword=`), and libpq's key=value
/// form (`host=db password=...`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    // The credentials end at the `@` that a host follows, not at the first `/` or `?`: a
    // password pasted unescaped (base64 holds `/`) must not make the whole URL look hostless.
    let (credentials, rest) = match host_at(rest) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (host, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match credentials {
        Some(credentials) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{credentials}@{host}"),
        },
        None => host.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                    _ => parameter.to_owned(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Where the credentials end: the first `@` with a user name before it (up to a `:` or the `@`)
/// and a host (and port) after it, then the path, the query or the end.
fn host_at(rest: &str) -> Option<usize> {
    rest.match_indices('@').map(|(at, _)| at).find(|&at| {
        let before = &rest[..at];
        let user_end = before
            .find([':', '/', '?'])
            .map(|end| before.as_bytes()[end]);
        if !matches!(user_end, None | Some(b':')) {
            return false;
        }
        let after = &rest[at + 1..];
        let host_end = after.find(['/', '?']).unwrap_or(after.len());
        after[..host_end]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:%,".contains(c))
    })
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret")
}

/// `host=db password='a b' user=x` with the password's value, quoted or not, replaced.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        let key = rest[..at]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or_default();
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        if !is_secret_key(key) {
            continue;
        }
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            // Up to the closing quote; a backslash escapes the next character.
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = index + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        out.push_str("***");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://writer:s3cr:et@db:5432/events?sslmode=require"),
            "postgres://writer:***@db:5432/events?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://db/events?user=w&password=s3cret&sslmode=require"),
            "postgres://db/events?user=w&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p@db?sslpassword=k"),
            "postgres://u:***@db?sslpassword=***"
        );
        assert_eq!(
            redact_url("host=db password='a b\\' c' user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact_url("host=db password=plain user=x"),
            "host=db password=*** user=x"
        );
        // Unescaped `/`, `?` and `@` in a password (a raw base64 one, say).
        assert_eq!(
            redact_url("postgres://writer:Zm9v/YmFy==@db:5432/events"),
            "postgres://writer:***@db:5432/events"
        );
        assert_eq!(
            redact_url("postgres://writer:a?b@c@db/events?sslmode=require"),
            "postgres://writer:***@db/events?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=p@ss"),
            "postgres://db/x?user=u&password=***"
        );
    }
}
