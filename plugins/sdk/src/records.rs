//! Typed records from a scheduler's machine-readable output: JSON into serde-derived
//! structs ([`json`]), XML into flat records of child elements ([`xml`], with the SDK's
//! `xml` feature).
//!
//! Invariants and trade-offs:
//! - Output that does not parse is [`Error::Backend`] naming the program and the parse
//!   error, never an empty answer: a job that "is not in the output" must really be
//!   absent. Empty output (only white space) is the empty document: schedulers print
//!   nothing when no job matches.
//! - Fields are read by name; fields a plugin does not declare are ignored, so a newer
//!   scheduler adding fields does not break it. Schedulers are loose with types (PBS
//!   prints numbers as JSON numbers or strings): [`int`] reads either.
//! - Derives come from the SDK's re-export, so a plugin declares no serde dependency of
//!   its own: write `#[derive(Deserialize)]` with
//!   `#[serde(crate = "corral_plugin_sdk::serde")]`.
//! - XML is read with `roxmltree` (pure Rust, no dependencies, builds for
//!   `wasm32-unknown-unknown`), the reader the Grid Engine plugin already used; a record
//!   is an element's child elements and their trimmed texts, which is the shape of
//!   every `qstat -xml`-style listing. No serde mapping for XML: these listings are flat,
//!   and a second parser would cost every plugin that enables `xml` its size.
//!
//! ```rust
//! use corral_plugin_sdk::records::{self, Deserialize};
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "corral_plugin_sdk::serde")]
//! struct Ad {
//!     #[serde(rename = "ClusterId")]
//!     cluster: u64,
//!     #[serde(rename = "HoldReason", default)]
//!     hold_reason: Option<String>,
//! }
//!
//! let ads: Vec<Ad> = records::json("condor_q", r#"[{"ClusterId": 12, "Owner": "alice"}]"#)?;
//! assert_eq!((ads[0].cluster, ads[0].hold_reason.as_deref()), (12, None));
//! let none: Vec<Ad> = records::json("condor_q", "\n")?;
//! assert!(none.is_empty());
//! assert!(records::json::<Vec<Ad>>("condor_q", "[{").is_err());
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

pub use serde::de::DeserializeOwned;
pub use serde::{Deserialize, Deserializer};

use crate::Error;

/// Parses `program`'s JSON output into `T`; empty output is `T`'s empty document
/// (`[]` or `{}`, whichever `T` accepts).
pub fn json<T: DeserializeOwned>(program: &str, text: &str) -> Result<T, Error> {
    let parse = |t: &str| serde_json::from_str::<T>(t);
    let parsed = match text.trim().is_empty() {
        true => parse("[]").or_else(|_| parse("{}")),
        false => parse(text),
    };
    parsed.map_err(|e| Error::Backend(format!("{program} printed JSON that does not parse: {e}")))
}

/// A serde `deserialize_with` for an integer printed as a JSON number or a numeric
/// string (absent, `null` or non-numeric: `None`).
///
/// ```rust
/// use corral_plugin_sdk::records::{self, Deserialize};
///
/// #[derive(Deserialize)]
/// #[serde(crate = "corral_plugin_sdk::serde")]
/// struct Job {
///     #[serde(default, deserialize_with = "records::int")]
///     substate: Option<i64>,
/// }
/// let a: Job = records::json("qstat", r#"{"substate": 91}"#)?;
/// let b: Job = records::json("qstat", r#"{"substate": " 42"}"#)?;
/// assert_eq!((a.substate, b.substate), (Some(91), Some(42)));
/// # Ok::<(), corral_plugin_sdk::Error>(())
/// ```
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// One XML element's child elements: `(tag, trimmed text)` in document order.
#[cfg(feature = "xml")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlRecord {
    pub fields: Vec<(String, String)>,
}

#[cfg(feature = "xml")]
impl XmlRecord {
    /// The text of the first child named `tag`; an empty element is `None`.
    pub fn get(&self, tag: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Every element named `tag`, anywhere in `program`'s XML output, as a record.
///
/// ```rust
/// use corral_plugin_sdk::records;
///
/// let xml = "<job_info><job_list><JB_job_number>7</JB_job_number><state> qw </state>\
///            </job_list></job_info>";
/// let jobs = records::xml("qstat", xml, "job_list")?;
/// assert_eq!((jobs[0].get("JB_job_number"), jobs[0].get("state")), (Some("7"), Some("qw")));
/// # Ok::<(), corral_plugin_sdk::Error>(())
/// ```
#[cfg(feature = "xml")]
pub fn xml(program: &str, text: &str, tag: &str) -> Result<Vec<XmlRecord>, Error> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| Error::Backend(format!("{program} printed XML that does not parse: {e}")))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name(tag))
        .map(|n| XmlRecord {
            fields: n
                .children()
                .filter(|c| c.is_element())
                .map(|c| {
                    let text = c.text().unwrap_or("").trim().to_string();
                    (c.tag_name().name().to_string(), text)
                })
                .collect(),
        })
        .collect())
}
