//! An error and its causes on one line, each cause said once.

use std::{error::Error, fmt};

/// Displays an error and its sources as `a: b: c`.
///
/// A cause whose text the line already ends with is skipped: an error that
/// both formats its source (`"invalid spec: {0}"`) and returns it from
/// `source()` would otherwise print the same words twice.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&line)
    }
}

/// [`ErrorChain`] as a `String`.
pub fn chain(error: &dyn Error) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("no such file")]
    struct Missing;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot read config")]
        Read(#[source] Missing),
        #[error("invalid spec: {0}")]
        Invalid(#[from] Missing),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("start failed")]
    struct Top(#[source] Outer);

    #[test]
    fn each_cause_once() {
        assert_eq!(
            chain(&Outer::Read(Missing)),
            "cannot read config: no such file"
        );
        assert_eq!(
            chain(&Outer::Invalid(Missing)),
            "invalid spec: no such file"
        );
        assert_eq!(
            chain(&Top(Outer::Invalid(Missing))),
            "start failed: invalid spec: no such file"
        );
    }
}
