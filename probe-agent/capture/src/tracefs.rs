//! Tracefs: where it is mounted, and the id and record layout of each kernel
//! tracepoint (`events/<group>/<name>/{id,format}`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where tracefs is usually mounted, in the order the kernel documents them.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Uses `root` if given, otherwise the first mounted standard location.
    pub fn locate(root: Option<&Path>) -> Result<Self> {
        match root {
            Some(root) => Self::at(root),
            None => CANDIDATES
                .iter()
                .find_map(|c| Self::at(Path::new(c)).ok())
                .ok_or_else(|| Error::TracefsMissing {
                    path: PathBuf::from(CANDIDATES[0]),
                }),
        }
    }

    fn at(root: &Path) -> Result<Self> {
        if root.join("events").is_dir() {
            Ok(Self {
                root: root.to_path_buf(),
            })
        } else {
            Err(Error::TracefsMissing {
                path: root.to_path_buf(),
            })
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the id and field layout of `group/name`.
    pub fn format(&self, group: &str, name: &str) -> Result<TracepointFormat> {
        let dir = self.root.join("events").join(group).join(name);
        // Reject path tricks: group and name are single path components.
        let plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
        if !plain(group) || !plain(name) || !dir.is_dir() {
            return Err(Error::UnknownTracepoint {
                group: group.to_owned(),
                name: name.to_owned(),
                path: dir,
            });
        }
        let format_path = dir.join("format");
        let text = fs::read_to_string(&format_path).map_err(|source| Error::Io {
            path: format_path.clone(),
            source,
        })?;
        TracepointFormat::parse(&text).map_err(|(line, reason)| Error::BadFormat {
            path: format_path,
            line,
            reason,
        })
    }
}

/// One field of a tracepoint record, as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    /// The C declaration without the name, e.g. `const char *` or `__data_loc char[]`.
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl FormatField {
    /// Fields every tracepoint record starts with (`common_type`, `common_pid`, ...).
    pub fn is_common(&self) -> bool {
        self.name.starts_with("common_")
    }
}

/// Id and fields of a tracepoint, parsed from its `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointFormat {
    pub id: u32,
    pub fields: Vec<FormatField>,
}

impl TracepointFormat {
    /// Parses the kernel's format description. Errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut id = None;
        let mut fields = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let lineno = index + 1;
            let line = line.trim();
            if let Some(value) = line.strip_prefix("ID:") {
                id = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| (lineno, "ID is not a number"))?,
                );
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).ok_or((lineno, "unrecognised field line"))?);
            }
        }
        let id = id.ok_or((1, "no ID line"))?;
        Ok(Self { id, fields })
    }

    /// The fields after the common header, in record order.
    pub fn own_fields(&self) -> impl Iterator<Item = &FormatField> {
        self.fields.iter().filter(|f| !f.is_common())
    }

    pub fn field(&self, name: &str) -> Option<&FormatField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses `field:const char * filename;\toffset:24;\tsize:8;\tsigned:0;`.
fn parse_field(line: &str) -> Option<FormatField> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = Some(value.trim() == "1"),
            _ => {}
        }
    }
    let decl = decl?;
    // The name is the last identifier, before an array suffix if there is one:
    // `char comm[16]`, `const char * filename`, `__data_loc char[] filename`.
    let (head, suffix) = match decl.strip_suffix(']').and_then(|d| d.rfind('[')) {
        Some(open) => (decl[..open].trim_end(), &decl[open..]),
        None => (decl, ""),
    };
    let name_start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &head[name_start..];
    if name.is_empty() {
        return None;
    }
    let c_type = format!("{}{suffix}", head[..name_start].trim());
    Some(FormatField {
        name: name.to_owned(),
        c_type,
        offset: offset?,
        size: size?,
        signed: signed.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAT: &str = "name: sys_enter_openat
ID: 721
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;

print fmt: \"dfd: 0x%08lx\", ((unsigned long)(REC->dfd))
";

    #[test]
    fn parses_syscall_format() {
        let f = TracepointFormat::parse(OPENAT).expect("valid format");
        assert_eq!(f.id, 721);
        assert_eq!(f.fields.len(), 9);
        let filename = f.field("filename").expect("filename field");
        assert_eq!(filename.c_type, "const char *");
        assert_eq!((filename.offset, filename.size), (24, 8));
        let own: Vec<_> = f.own_fields().map(|f| f.name.as_str()).collect();
        assert_eq!(own, ["__syscall_nr", "dfd", "filename", "flags", "mode"]);
        assert!(f.field("common_pid").expect("common_pid").signed);
    }

    #[test]
    fn parses_arrays_and_data_loc() {
        let text = "ID: 5\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:__data_loc char[] filename;\toffset:24;\tsize:4;\tsigned:0;\n";
        let f = TracepointFormat::parse(text).expect("valid format");
        assert_eq!(f.fields[0].name, "comm");
        assert_eq!(f.fields[0].c_type, "char[16]");
        assert_eq!(f.fields[1].name, "filename");
        assert_eq!(f.fields[1].c_type, "__data_loc char[]");
    }

    #[test]
    fn rejects_malformed_formats() {
        assert_eq!(
            TracepointFormat::parse("field:int x;\toffset:0;\tsize:4;"),
            Err((1, "no ID line"))
        );
        assert_eq!(
            TracepointFormat::parse("ID: 1\nfield:int x;\toffset:zero;\tsize:4;"),
            Err((2, "unrecognised field line"))
        );
        assert_eq!(
            TracepointFormat::parse("ID: x"),
            Err((1, "ID is not a number"))
        );
    }

    #[test]
    fn missing_tracefs_names_the_path() {
        let err =
            Tracefs::locate(Some(Path::new("/nonexistent/tracing"))).expect_err("not mounted");
        assert_eq!(
            err.to_string(),
            "tracefs is not mounted at /nonexistent/tracing: mount it with `mount -t tracefs nodev /sys/kernel/tracing` or pass --tracefs"
        );
    }
}
