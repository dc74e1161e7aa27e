//! Uprobes created through tracefs' `uprobe_events` instead of the uprobe PMU.
//!
//! Opening a perf event on the kernel's uprobe PMU, which is how aya attaches
//! uprobes, is allowed to CAP_SYS_ADMIN only. A uprobe written into tracefs'
//! `uprobe_events` is a trace event like any tracepoint: the tracefs file is the
//! owner's to write, opening the event needs CAP_PERFMON and linking the program
//! to it CAP_BPF. An agent that runs with CAP_BPF and CAP_PERFMON alone, as the
//! chart's security context has it, attaches its uprobes this way; the probe's
//! attach cookie rides on the BPF link exactly as on a PMU event.
//!
//! Each event lives in a group named after the agent's process, `sonde_<pid>`.
//! A link removes its event when it is detached or dropped, and
//! [`UprobeEvents::new`] removes the events of agents that are gone (killed
//! before they could clean up).

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya_obj::generated::{
    PERF_FLAG_FD_CLOEXEC, bpf_attach_type::BPF_PERF_EVENT, bpf_cmd::BPF_LINK_CREATE,
    perf_event_attr, perf_type_id::PERF_TYPE_TRACEPOINT,
};

use crate::error::{Error, Result};

/// Prefix of the groups of Sonde's events; the agent's pid follows.
const GROUP_PREFIX: &str = "sonde_";

/// The agent's uprobe events in tracefs.
#[derive(Debug)]
pub struct UprobeEvents {
    control: PathBuf,
    events: PathBuf,
    group: String,
    next: u64,
}

impl UprobeEvents {
    /// Events under the tracefs mounted at `tracefs`; first removes the events
    /// of agents whose process is gone.
    pub fn new(tracefs: &Path) -> Self {
        let events = Self {
            control: tracefs.join("uprobe_events"),
            events: tracefs.join("events"),
            group: format!("{GROUP_PREFIX}{}", std::process::id()),
            next: 0,
        };
        events.remove_stale();
        events
    }

    /// Creates a uprobe (a uretprobe if `ret`) at `offset` in `binary`, opens it
    /// for every process on CPU 0 (a trace event runs its programs on every CPU)
    /// and links `program` to it with `cookie`.
    pub fn attach(
        &mut self,
        program: BorrowedFd<'_>,
        binary: &Path,
        offset: u64,
        ret: bool,
        cookie: u64,
    ) -> Result<UprobeEventLink> {
        let path = binary.to_str().filter(|p| !p.contains(char::is_whitespace));
        let Some(path) = path else {
            return Err(Error::UprobeEvent {
                event: binary.display().to_string(),
                action: "create",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "tracefs cannot name a binary whose path has whitespace or is not UTF-8",
                ),
            });
        };
        let name = format!("u{}", self.next);
        self.next += 1;
        let event = format!("{}/{name}", self.group);
        let kind = if ret { 'r' } else { 'p' };
        self.write(&format!("{kind}:{event} {path}:{offset:#x}"))
            .map_err(|source| Error::UprobeEvent {
                event: event.clone(),
                action: "create",
                source,
            })?;
        // From here on the event exists: the link removes it, also on error.
        let mut link = UprobeEventLink {
            link: None,
            perf: None,
            control: self.control.clone(),
            event,
            removed: false,
        };
        let id_path = self.events.join(&self.group).join(&name).join("id");
        let id = fs::read_to_string(&id_path)
            .and_then(|id| {
                id.trim()
                    .parse::<u64>()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .map_err(|source| link.error("read the id of", source))?;
        let perf = open_trace_event(id).map_err(|source| link.error("open", source))?;
        let bpf_link = link_program(program, perf.as_fd(), cookie)
            .map_err(|source| link.error("link the program to", source))?;
        link.perf = Some(perf);
        link.link = Some(bpf_link);
        Ok(link)
    }

    fn write(&self, command: &str) -> io::Result<()> {
        write_command(&self.control, command)
    }

    /// Removes the events of Sonde's agents whose process no longer exists.
    fn remove_stale(&self) {
        let Ok(listing) = fs::read_to_string(&self.control) else {
            return;
        };
        for event in stale_events(&listing, |pid| Path::new("/proc").join(pid).exists()) {
            match self.write(&format!("-:{event}")) {
                Ok(()) => {
                    tracing::info!(%event, "removed a uprobe event left by an agent that is gone")
                }
                Err(e) => {
                    tracing::warn!(%event, error = %e, "cannot remove a uprobe event left by an agent that is gone")
                }
            }
        }
    }
}

/// `group/name` of every event in a `uprobe_events` listing whose group is an
/// agent's (`sonde_<pid>`) and whose pid `alive` says is gone.
fn stale_events(listing: &str, alive: impl Fn(&str) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let definition = line.split_whitespace().next()?;
            let (_, event) = definition.split_once(':')?;
            let (group, _) = event.split_once('/')?;
            let pid = group.strip_prefix(GROUP_PREFIX)?;
            let is_pid = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
            (is_pid && !alive(pid)).then(|| event.to_owned())
        })
        .collect()
}

/// Appends one command to tracefs' `uprobe_events`. Appending matters:
/// opening the file for writing without it clears every uprobe event.
fn write_command(control: &Path, command: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(control)?;
    file.write_all(format!("{command}\n").as_bytes())
}

/// One uprobe event with the program linked to it. Detaching, or dropping,
/// unlinks the program, closes the event and removes it from tracefs.
#[derive(Debug)]
pub struct UprobeEventLink {
    link: Option<OwnedFd>,
    perf: Option<OwnedFd>,
    control: PathBuf,
    event: String,
    /// Whether the event is gone from tracefs.
    removed: bool,
}

impl UprobeEventLink {
    /// The event, as `group/name` under tracefs' `events`.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// Unlinks the program and removes the event.
    pub fn detach(mut self) -> Result<()> {
        self.release()
            .map_err(|source| self.error("remove", source))
    }

    fn release(&mut self) -> io::Result<()> {
        // The kernel refuses to remove an event that is still open.
        drop(self.link.take());
        drop(self.perf.take());
        if !self.removed {
            write_command(&self.control, &format!("-:{}", self.event))?;
            self.removed = true;
        }
        Ok(())
    }

    fn error(&self, action: &'static str, source: io::Error) -> Error {
        Error::UprobeEvent {
            event: self.event.clone(),
            action,
            source,
        }
    }
}

impl Drop for UprobeEventLink {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(event = %self.event, error = %e, "cannot remove a uprobe event");
        }
    }
}

/// `perf_event_open` on trace event `id`, for every process, on CPU 0.
#[allow(
    unsafe_code,
    reason = "a system call without a safe wrapper in our dependencies"
)]
fn open_trace_event(id: u64) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct for which all zeroes is the
    // documented "nothing set" value.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = PERF_TYPE_TRACEPOINT as u32;
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: the attribute outlives the call; the kernel reads `size` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            libc::c_ulong::from(PERF_FLAG_FD_CLOEXEC),
        )
    };
    owned(fd)
}

/// The `link_create` member of `union bpf_attr` for a perf event link.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}

/// `bpf(BPF_LINK_CREATE)` of `program` to the perf event, with `cookie`.
#[allow(
    unsafe_code,
    reason = "aya links programs only to the events it opens itself"
)]
fn link_program(program: BorrowedFd<'_>, perf: BorrowedFd<'_>, cookie: u64) -> io::Result<OwnedFd> {
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: perf.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT as u32,
        flags: 0,
        bpf_cookie: cookie,
    };
    // SAFETY: the attribute outlives the call; the kernel reads `size` bytes
    // and treats the union's members beyond them as zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE as libc::c_int,
            &raw const attr,
            std::mem::size_of::<LinkCreate>() as libc::c_uint,
        )
    };
    owned(fd)
}

#[allow(
    unsafe_code,
    reason = "taking ownership of a descriptor the kernel returned"
)]
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_gone_agents_are_stale() {
        let listing = "p:sonde_100/u0 /usr/bin/app:0x10\n\
                       r:sonde_100/u1 /usr/bin/app:0x10\n\
                       p:sonde_200/u0 /usr/bin/app:0x20\n\
                       p:other/u0 /usr/bin/app:0x30\n\
                       p:sonde_x/u0 /usr/bin/app:0x40\n\
                       p:uprobes/p_app_0x50 /usr/bin/app:0x50\n";
        let stale = stale_events(listing, |pid| pid == "200");
        assert_eq!(stale, ["sonde_100/u0", "sonde_100/u1"]);
    }

    #[test]
    fn link_create_matches_the_kernel_layout() {
        // prog_fd, target_fd, attach_type, flags, then the perf_event member
        // of the inner union, whose first field is bpf_cookie.
        assert_eq!(std::mem::size_of::<LinkCreate>(), 24);
        assert_eq!(std::mem::offset_of!(LinkCreate, bpf_cookie), 16);
    }
}
