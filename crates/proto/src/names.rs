//! Node names: one rule for certificates, database keys, metric labels and the CLI.

/// Checks that a node name is usable as a certificate name, a database key and a
/// metrics label: 1–63 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "{name:?} is not a valid name: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}
