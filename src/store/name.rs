//! Model names: the only part of a store path that comes from input.
//!
//! A [`ModelName`] can only be built through [`ModelName::parse`], so any
//! path built from one is inside the store by construction: no separators,
//! no leading dot (hidden files, `.` and `..`), no Windows device names (the
//! store may be shared with tools on other systems).

use std::fmt;

/// Longest accepted name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A validated model name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    /// A byte outside ASCII letters, digits, `.`, `-`, `_`.
    BadCharacter(char),
    LeadingDot,
    /// Contains `..` anywhere.
    DotDot,
    /// `CON`, `NUL`, `COM1`, … (with or without an extension).
    DeviceName,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a model name cannot be empty"),
            Self::TooLong(n) => {
                write!(f, "a model name is at most {MAX_NAME_BYTES} bytes, got {n}")
            }
            Self::BadCharacter(c) => write!(
                f,
                "character {c:?} is not allowed in a model name (use ASCII letters, digits, '.', '-', '_')"
            ),
            Self::LeadingDot => f.write_str("a model name cannot start with '.'"),
            Self::DotDot => f.write_str("a model name cannot contain '..'"),
            Self::DeviceName => {
                f.write_str("a model name cannot be a Windows device name (CON, NUL, COM1, ...)")
            }
        }
    }
}

impl std::error::Error for NameError {}

const DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

impl ModelName {
    /// Validates `s` against the store convention.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(NameError::BadCharacter(c));
        }
        if s.starts_with('.') {
            return Err(NameError::LeadingDot);
        }
        if s.contains("..") {
            return Err(NameError::DotDot);
        }
        // Windows treats "NUL.txt" as the device too, so compare the stem.
        let stem = s.split('.').next().unwrap_or(s);
        if DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
            return Err(NameError::DeviceName);
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelName({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_model_names_are_accepted() {
        for ok in [
            "llama-3.1-8b-instruct.Q4_K_M",
            "a",
            "qwen2_7b",
            "Model.v2",
            &"x".repeat(128),
        ] {
            assert_eq!(ModelName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn traversal_and_separator_names_are_refused() {
        assert_eq!(
            ModelName::parse("../etc"),
            Err(NameError::BadCharacter('/'))
        );
        assert_eq!(ModelName::parse(".."), Err(NameError::LeadingDot));
        assert_eq!(ModelName::parse("a..b"), Err(NameError::DotDot));
        assert_eq!(ModelName::parse(".hidden"), Err(NameError::LeadingDot));
        assert_eq!(ModelName::parse("a/b"), Err(NameError::BadCharacter('/')));
        assert_eq!(ModelName::parse("a\\b"), Err(NameError::BadCharacter('\\')));
        assert_eq!(ModelName::parse("a\0b"), Err(NameError::BadCharacter('\0')));
        assert_eq!(ModelName::parse("naïve"), Err(NameError::BadCharacter('ï')));
        assert_eq!(
            ModelName::parse("with space"),
            Err(NameError::BadCharacter(' '))
        );
    }

    #[test]
    fn empty_and_oversize_names_are_refused() {
        assert_eq!(ModelName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ModelName::parse(&"x".repeat(129)),
            Err(NameError::TooLong(129))
        );
    }

    #[test]
    fn windows_device_names_are_refused_in_any_case_and_with_extensions() {
        for bad in ["CON", "nul", "Com1", "LPT9", "NUL.gguf", "aux.tar.gz"] {
            assert_eq!(ModelName::parse(bad), Err(NameError::DeviceName), "{bad}");
        }
        assert!(ModelName::parse("CONsole").is_ok());
        assert!(ModelName::parse("COM10").is_ok());
    }
}
