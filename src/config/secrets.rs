//! Secrets kept out of the config file: `${NAME}` environment references in
//! any string value, `*_file` fields (a password or token read from a file,
//! as a Kubernetes Secret is mounted) and a cluster's `users_file` in
//! pgbouncer's `auth_file` format. Expansion and parsing are pure; reading
//! the named files is this module's only IO, done at each load and reload.

use super::load::ConfigError;
use super::model::UserConfig;
use serde::Deserialize;
use serde_yaml::Value;

/// A user as written in the file, before its `*_file` fields are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    backend_password: Option<String>,
    #[serde(default)]
    backend_password_file: Option<String>,
}

/// Replaces every `${NAME}` in the string values of `value` (keys stay as
/// written) with `lookup(NAME)`; `$${` is a literal `${`. A reference to an
/// unset variable, or one left open, is an error naming the field.
pub(super) fn expand_env(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, lookup) {
            Ok(done) => *s = done,
            Err(message) => errors.push(ConfigError {
                path: path.to_owned(),
                message,
            }),
        },
        Value::Mapping(map) => {
            for (key, v) in map.iter_mut() {
                let key = match key {
                    Value::String(k) => k.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_env(v, &child, lookup, errors);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_env(v, &format!("{path}[{i}]"), lookup, errors);
            }
        }
        Value::Tagged(tagged) => expand_env(&mut tagged.value, path, lookup, errors),
        _ => {}
    }
}

/// One string with its references replaced.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "`${` without its closing `}`".to_owned())?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
            if !valid {
                // The text is not echoed: it may be part of a secret.
                return Err(
                    "`${` not followed by an environment variable name and `}` (write `$${` for a literal `${`)"
                        .to_owned(),
                );
            }
            let v =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&v);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The process environment, as [`expand_env`]'s lookup.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A secret given inline (`field`) or in a file (`field_file`), never both.
/// The file's content without one trailing newline is the secret.
pub(super) fn inline_or_file(
    inline: Option<String>,
    file: Option<String>,
    path: &str,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let join = |f: &str| {
        if path.is_empty() {
            f.to_owned()
        } else {
            format!("{path}.{f}")
        }
    };
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError {
                path: join(field),
                message: format!("give `{field}` or `{field}_file`, not both"),
            });
            None
        }
        (Some(v), None) => Some(v),
        (None, Some(f)) => match read_secret(&f) {
            Ok(v) => Some(v),
            Err(message) => {
                errors.push(ConfigError {
                    path: join(&format!("{field}_file")),
                    message,
                });
                None
            }
        },
        (None, None) => None,
    }
}

/// A secret file's content, without one trailing newline.
fn read_secret(file: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let v = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if v.is_empty() {
        return Err(format!("{file} is empty"));
    }
    Ok(v.to_owned())
}

/// A cluster's users: those written inline, each with its `*_file` fields
/// read, then those of `users_file`.
pub(super) fn users(
    raw: Vec<RawUser>,
    users_file: Option<&str>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<UserConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, u) in raw.into_iter().enumerate() {
        let upath = format!("{path}.users[{i}]");
        let before = errors.len();
        let password = inline_or_file(u.password, u.password_file, &upath, "password", errors);
        let backend_password = inline_or_file(
            u.backend_password,
            u.backend_password_file,
            &upath,
            "backend_password",
            errors,
        );
        match password {
            Some(p) if p.is_empty() => errors.push(ConfigError {
                path: format!("{upath}.password"),
                message: "empty: an empty password is never accepted (as PostgreSQL and pgbouncer)"
                    .to_owned(),
            }),
            Some(password) => out.push(UserConfig {
                name: u.name,
                password,
                backend_password,
            }),
            None if errors.len() == before => errors.push(ConfigError {
                path: format!("{upath}.password"),
                message: "missing: give `password` or `password_file`".to_owned(),
            }),
            None => {}
        }
    }
    if let Some(file) = users_file {
        let fpath = format!("{path}.users_file");
        let parsed = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {file}: {e}"))
            .and_then(|text| parse_auth_file(&text).map_err(|e| format!("{file}: {e}")));
        match parsed {
            Ok(list) => out.extend(list.into_iter().map(|(name, password)| UserConfig {
                name,
                password,
                backend_password: None,
            })),
            Err(message) => errors.push(ConfigError {
                path: fpath,
                message,
            }),
        }
    }
    out
}

/// Parses pgbouncer's `auth_file`: one `"name" "password"` per line (more
/// fields are ignored), `""` inside quotes is a quote, blank lines and
/// lines starting with `;` or `#` are skipped.
pub(super) fn parse_auth_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let at = |what: &str| format!("line {}: {what}", n + 1);
        let (name, rest) = quoted(line).ok_or_else(|| at("expected \"name\" \"password\""))?;
        let (password, _) = quoted(rest.trim_start())
            .ok_or_else(|| at("expected a quoted password after the name"))?;
        if name.is_empty() {
            return Err(at("empty user name"));
        }
        if password.is_empty() {
            return Err(at("empty password (never accepted, as in pgbouncer)"));
        }
        users.push((name, password));
    }
    Ok(users)
}

/// A `"…"` string at the start of `s` (`""` is a quote) and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices().peekable();
    let body = &s[1..];
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if chars.peek().is_some_and(|&(_, n)| n == '"') {
                chars.next();
                out.push('"');
            } else {
                return Some((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PG_PASS" => Some("s3cr$t}".to_owned()),
            "HOST" => Some("10.0.0.5".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_in_values_and_name_their_field_when_unset() {
        let mut v: Value = serde_yaml::from_str(
            "a: '${PG_PASS}'\nb: ['http://${HOST}:8008', 'x$${HOST}', 'cost $5']\nc: {d: '${NOPE}', e: '${bad-name}', f: '${OPEN'}\n",
        )
        .unwrap_or(Value::Null);
        let mut errors = Vec::new();
        expand_env(&mut v, "", &env, &mut errors);
        let s = |p: &str| {
            p.split('.')
                .try_fold(&v, |v, k| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        assert_eq!(s("a").as_deref(), Some("s3cr$t}"));
        let b = v
            .get("b")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let b: Vec<_> = b.iter().filter_map(Value::as_str).collect();
        assert_eq!(b, ["http://10.0.0.5:8008", "x${HOST}", "cost $5"]);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["c.d", "c.e", "c.f"]);
        assert!(
            errors[0].message.contains("`NOPE` is not set"),
            "{errors:?}"
        );
        assert!(
            errors[1]
                .message
                .contains("not followed by an environment variable name")
        );
        assert!(
            !errors[1].message.contains("bad-name"),
            "secrets are not echoed"
        );
        assert!(errors[2].message.contains("closing"));
    }

    #[test]
    fn auth_files_parse_as_pgbouncer_writes_them() {
        let text = "; comment\n\n\"app\" \"SCRAM-SHA-256$4096:abc$def:ghi\"\n# another\n  \"we\"\"ird\"   \"pa ss\" \"ignored\"\n";
        let users = parse_auth_file(text).unwrap_or_default();
        assert_eq!(
            users,
            [
                (
                    "app".to_owned(),
                    "SCRAM-SHA-256$4096:abc$def:ghi".to_owned()
                ),
                ("we\"ird".to_owned(), "pa ss".to_owned()),
            ]
        );
        for (bad, line) in [
            ("app secret\n", 1),
            ("\"a\" \"b\"\n\"c\"\n", 2),
            ("\"\" \"x\"", 1),
            ("\"a\" \"b\"\n\"u\" \"\"\n", 2),
        ] {
            let e = parse_auth_file(bad).err().unwrap_or_default();
            assert!(e.starts_with(&format!("line {line}:")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn secrets_come_inline_or_from_a_file_never_both() {
        let dir = std::env::temp_dir().join(format!("pgvane-secrets-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("token");
        let empty = dir.join("empty");
        let _ = std::fs::write(&file, "from-a-secret\n");
        let _ = std::fs::write(&empty, "\n");
        let f = |p: &std::path::Path| Some(p.display().to_string());
        let mut errors = Vec::new();
        let got = inline_or_file(None, f(&file), "", "admin_token", &mut errors);
        assert_eq!(got.as_deref(), Some("from-a-secret"));
        assert!(errors.is_empty());
        assert_eq!(
            inline_or_file(Some("x".into()), None, "p", "t", &mut errors).as_deref(),
            Some("x")
        );
        assert!(inline_or_file(Some("x".into()), f(&file), "p", "t", &mut errors).is_none());
        assert!(inline_or_file(None, f(&empty), "p", "t", &mut errors).is_none());
        assert!(inline_or_file(None, f(&dir.join("none")), "p", "t", &mut errors).is_none());
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["p.t", "p.t_file", "p.t_file"]);
        assert!(errors[1].message.contains("is empty"));
        assert!(errors[2].message.contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
