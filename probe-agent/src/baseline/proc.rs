//! Parsing of the `/proc/<pid>` files the baseline tables read. Pure
//! functions over the files' text, so they are tested on fixed samples.

/// What `/proc/<pid>/stat` says about a process's resource use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat<'a> {
    pub comm: &'a str,
    pub minor_faults: u64,
    pub major_faults: u64,
    /// Clock ticks (`CLK_TCK` per second) in user mode.
    pub utime_ticks: u64,
    /// Clock ticks in kernel mode.
    pub stime_ticks: u64,
    pub num_threads: u64,
    pub vsize_bytes: u64,
    /// Resident set in pages.
    pub rss_pages: u64,
}

/// Why a stat line could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatError {
    #[error("no command name in parentheses")]
    NoComm,
    #[error("field {field} is missing or not a number")]
    Field { field: usize },
}

/// Parses `/proc/<pid>/stat` (see proc(5)). The command name is between
/// the first `(` and the last `)`: it may itself hold spaces and
/// parentheses.
pub fn parse_stat(text: &str) -> Result<ProcStat<'_>, StatError> {
    let open = text.find('(').ok_or(StatError::NoComm)?;
    let close = text.rfind(')').ok_or(StatError::NoComm)?;
    if close < open {
        return Err(StatError::NoComm);
    }
    let comm = &text[open + 1..close];
    // Fields counted from 1 as proc(5) does; the rest starts at field 3.
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let mut at = 2;
    let mut field = |wanted: usize| -> Result<u64, StatError> {
        // Fields are asked for in increasing order.
        for value in rest.by_ref() {
            at += 1;
            if at == wanted {
                return value
                    .parse()
                    .map_err(|_| StatError::Field { field: wanted });
            }
        }
        Err(StatError::Field { field: wanted })
    };
    let minor_faults = field(10)?;
    let major_faults = field(12)?;
    let utime_ticks = field(14)?;
    let stime_ticks = field(15)?;
    let num_threads = field(20)?;
    let vsize_bytes = field(23)?;
    let rss_pages = field(24)?;
    Ok(ProcStat {
        comm,
        minor_faults,
        major_faults,
        utime_ticks,
        stime_ticks,
        num_threads,
        vsize_bytes,
        rss_pages,
    })
}

/// What `/proc/<pid>/io` says: bytes through read/write-like calls, and
/// bytes that really went to or came from storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcIo {
    pub rchar: u64,
    pub wchar: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Parses `/proc/<pid>/io`; `None` if a field is missing.
pub fn parse_io(text: &str) -> Option<ProcIo> {
    let mut io = ProcIo::default();
    let mut seen = 0u8;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "rchar" => (&mut io.rchar, 1),
            "wchar" => (&mut io.wchar, 2),
            "read_bytes" => (&mut io.read_bytes, 4),
            "write_bytes" => (&mut io.write_bytes, 8),
            _ => continue,
        };
        *slot.0 = value.trim().parse().ok()?;
        seen |= slot.1;
    }
    (seen == 15).then_some(io)
}

/// The cgroup v2 path of a process from `/proc/<pid>/cgroup`: the `0::`
/// line. `None` on a host without cgroup v2.
pub fn unified_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (busy (x) y) R 1 4242 4242 0 -1 4194560 1234 0 7 0 \
                        250 31 0 0 20 0 3 0 123456 10485760 512 18446744073709551615 \
                        1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn reads_stat_fields_past_a_tricky_command_name() {
        let stat = parse_stat(STAT).expect("parses");
        assert_eq!(
            stat,
            ProcStat {
                comm: "busy (x) y",
                minor_faults: 1234,
                major_faults: 7,
                utime_ticks: 250,
                stime_ticks: 31,
                num_threads: 3,
                vsize_bytes: 10_485_760,
                rss_pages: 512,
            }
        );
    }

    #[test]
    fn refuses_truncated_stat_lines() {
        assert_eq!(parse_stat("12 sh R 1"), Err(StatError::NoComm));
        assert_eq!(
            parse_stat("12 (sh) R 1 1 1 0 -1 0 5 0"),
            Err(StatError::Field { field: 12 })
        );
        assert_eq!(
            parse_stat(&STAT.replace(" 250 ", " x ")),
            Err(StatError::Field { field: 14 })
        );
    }

    #[test]
    fn reads_io_counters() {
        let text = "rchar: 100\nwchar: 200\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\n\
                    write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(text),
            Some(ProcIo {
                rchar: 100,
                wchar: 200,
                read_bytes: 4096,
                write_bytes: 8192,
            })
        );
        assert_eq!(parse_io("rchar: 100\nwchar: 200\n"), None);
        assert_eq!(
            parse_io("rchar: x\nwchar: 1\nread_bytes: 1\nwrite_bytes: 1"),
            None
        );
    }

    #[test]
    fn finds_the_unified_line() {
        let text = "12:cpu,cpuacct:/kubepods/pod1/abc\n0::/kubepods/pod1/abc\n";
        assert_eq!(unified_cgroup(text), Some("/kubepods/pod1/abc"));
        assert_eq!(unified_cgroup("12:cpu:/x\n"), None);
    }
}
