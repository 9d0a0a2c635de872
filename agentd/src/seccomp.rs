//! A container's seccomp profile (OCI `linux.seccomp`) compiled to one classic-BPF program,
//! installed in every process of the container (its init and each exec) as runc installs it.
//!
//! [`compile`] runs in agentd before the `clone` (it allocates); the child only calls
//! [`Filter::install`], one `seccomp(2)` system call on the prepared program. Where
//! ([`crate::spawn`]): with `noNewPrivileges`, as late as possible, right before `execve`;
//! without it, before the capabilities are dropped and the user changes, while the process
//! still has the `CAP_SYS_ADMIN` that installing a filter then needs (runc's
//! `standard_init_linux.go`). The system calls that follow (`setgroups`, `setuid`, `capset`,
//! `prctl`, `chdir`, `execve`) are then subject to the profile, as under runc.
//!
//! # Why our own generator
//!
//! The rules of an OCI profile each have their own action (containerd's RuntimeDefault: an
//! allow list, `clone3` failing with `ENOSYS`, everything else `EPERM`), and may name the 32-bit
//! x86 architecture besides the native one. `seccompiler` (Firecracker's) builds one action per
//! filter and kills any process whose system call comes from another architecture, so a 32-bit
//! program would die at its first call where runc lets it run; stacking one filter per action
//! would give the same results for 64-bit calls only. The program here is small: it mirrors
//! what libseccomp generates for runc, in one filter:
//!
//! ```text
//! arch == AUDIT_ARCH_X86_64 ? -> x86_64 section    (the native one, always)
//! arch == AUDIT_ARCH_I386   ? -> i386 section      (when SCMP_ARCH_X86 is listed)
//! else: kill the thread                            (libseccomp's "bad architecture" action)
//! section: nr >= 0x40000000 (x32 on x86_64)        -> ENOSYS if SCMP_ARCH_X32 is listed, else
//!                                                     the bad-architecture action
//!          nr > largest number the profile names   -> ENOSYS (runc's patchbpf stub: a newer
//!                                                     system call than the profile knows)
//!          binary search on nr -> a rule's action, or its argument checks, in rule order
//!          no match -> defaultAction
//! ```
//!
//! # Semantics (runc's, with libseccomp's)
//!
//! - A name unknown on an architecture is skipped there (runc skips names libseccomp does not
//!   know); a rule whose action is the default action is skipped (runc: redundant).
//! - Conditions of a rule must all hold; if two name the same argument, each condition becomes
//!   a rule of its own (runc's "old behaviour": any of them may hold).
//! - Comparisons are unsigned, on 64 bits for 64-bit architectures and on the low 32 bits for
//!   32-bit ones (libseccomp). `SCMP_CMP_MASKED_EQ`: `(arg & value) == valueTwo`.
//! - `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` without `errnoRet` use `EPERM`; `SCMP_ACT_KILL` kills
//!   the thread, as runc maps it.
//! - Flags: `SECCOMP_FILTER_FLAG_LOG` and `SECCOMP_FILTER_FLAG_SPEC_ALLOW` are passed to the
//!   kernel; `SECCOMP_FILTER_FLAG_TSYNC` means nothing for a single-threaded child and
//!   `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only applies to notifications: both are ignored
//!   (debug log). Another flag is an error, as in runc.
//!
//! # Limits
//!
//! - `SCMP_ACT_NOTIFY` is refused (no seccomp agent); the host refuses it first.
//! - Architectures: the native one (x86_64 or aarch64) and, on x86_64, i386. x32 system calls
//!   are answered `ENOSYS` when the profile lists `SCMP_ARCH_X32` (what the guest kernel, built
//!   without `CONFIG_X86_X32_ABI`, answers anyway), else killed; 32-bit ARM calls on aarch64
//!   are killed. (The guest kernel has `CONFIG_IA32_EMULATION`: 32-bit x86 programs do run.)
//!   Other `SCMP_ARCH_*` names are accepted and ignored: their calls cannot occur in the VM.
//! - i386's multiplexed `socketcall`/`ipc` are filtered by those names only: a rule naming
//!   `socket` covers the direct `socket` call (which 32-bit glibc uses since Linux 4.3), not
//!   `socketcall(SYS_SOCKET)`, which libseccomp would add.
//! - Overlapping rules of one system call with different actions: the most restrictive action
//!   is tried first (kernel precedence: kill, trap, errno, trace, log, allow); libseccomp
//!   resolves such overlaps in its rule tree, profiles seen in practice have none.
//! - A profile that denies what the child calls after installing it (see above) makes the start
//!   fail like runc's, with that call's errno; if it denies `execve` and `write`, the failure
//!   cannot be reported and the process ends with status 127 after it was reported started.
//! - A program longer than the kernel's 4096 instructions is an error (RuntimeDefault takes
//!   about 2150 for its two architectures, x86_64 and i386).

use std::collections::BTreeMap;

use msb_protocol::seccomp::{Seccomp, SeccompAction, SeccompArg, SeccompOp};

/// Why a profile cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `SCMP_ACT_NOTIFY`.
    #[error("{0}: SCMP_ACT_NOTIFY is not supported (no seccomp agent)")]
    Notify(String),
    /// An argument index past 5.
    #[error("{0}: argument index {1} is not one of 0 to 5")]
    ArgIndex(String, u32),
    /// An errno that does not fit `SECCOMP_RET_DATA`.
    #[error("{0}: errno {1} does not fit the 16 data bits of a seccomp return value")]
    Errno(String, u32),
    /// An `SCMP_ARCH_*` name libseccomp does not know.
    #[error("unknown seccomp architecture {0:?}")]
    Arch(String),
    /// A `SECCOMP_FILTER_FLAG_*` name we cannot apply.
    #[error("seccomp flag {0:?} is not supported")]
    Flag(String),
    /// More instructions than the kernel takes.
    #[error("the seccomp program has {0} instructions, more than the kernel's {max}", max = MAX_INSNS)]
    TooLong(usize),
}

/// A compiled profile, ready for [`Filter::install`].
pub struct Filter {
    program: Vec<libc::sock_filter>,
    /// `program.len()`, checked to fit `sock_fprog.len`.
    len: u16,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

impl Filter {
    /// Installs the filter on the calling thread (and so on what it `execve`s): returns the
    /// system call's result, `-1` with `errno` set on failure. Without `no_new_privs` the
    /// thread needs `CAP_SYS_ADMIN`.
    ///
    /// Allocates nothing and takes no lock: safe in the cloned child ([`crate::spawn`]).
    pub fn install(&self) -> libc::c_long {
        let prog = libc::sock_fprog {
            len: self.len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `prog` and the `len` instructions it
        // points to, all alive for the call; it changes nothing in this address space.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        }
    }

    /// The program, for tests and logs.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

// Instruction codes, from linux/bpf_common.h (checked against libc's in the tests).
/// `BPF_LD | BPF_W | BPF_ABS`: A = 32-bit word of `seccomp_data` at k.
const LD_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`: A &= k.
const AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JA`: pc += k.
const JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K`.
const JGT: u16 = 0x25;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE: u16 = 0x35;
/// `BPF_RET | BPF_K`.
const RET: u16 = 0x06;

// `struct seccomp_data`: nr, arch, instruction pointer, then six 64-bit arguments.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// `__X32_SYSCALL_BIT`: an x32 call on x86_64.
const X32_BIT: u32 = 0x4000_0000;

/// libseccomp's default action for a call of an architecture the filter does not cover.
const BAD_ARCH: u32 = libc::SECCOMP_RET_KILL_THREAD;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | ENOSYS;
// Both fit in SECCOMP_RET_DATA; errno values are positive.
const ENOSYS: u32 = libc::ENOSYS.unsigned_abs();
const EPERM: u32 = libc::EPERM.unsigned_abs();

/// Every `SCMP_ARCH_*` libseccomp knows: others are an error, as in runc.
const KNOWN_ARCHES: [&str; 20] = [
    "SCMP_ARCH_NATIVE",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
];

/// An architecture the program filters: its audit value, whether its arguments are 64-bit,
/// and its system call numbers by name.
struct Arch {
    audit: u32,
    wide: bool,
    number: fn(&str) -> Option<u32>,
}

/// The number of `name` on x86_64.
#[cfg(target_arch = "x86_64")]
fn x86_64_number(name: &str) -> Option<u32> {
    let nr = name.parse::<syscalls::x86_64::Sysno>().ok()?.id();
    u32::try_from(nr).ok()
}

/// The number of `name` on i386 (what a 32-bit process calls on x86_64).
#[cfg(target_arch = "x86_64")]
fn i386_number(name: &str) -> Option<u32> {
    let nr = name.parse::<syscalls::x86::Sysno>().ok()?.id();
    u32::try_from(nr).ok()
}

/// The number of `name` on aarch64.
#[cfg(target_arch = "aarch64")]
fn aarch64_number(name: &str) -> Option<u32> {
    let nr = name.parse::<syscalls::aarch64::Sysno>().ok()?.id();
    u32::try_from(nr).ok()
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("seccomp: agentd has system call tables for x86_64 and aarch64 only");

#[cfg(target_arch = "x86_64")]
const NATIVE: Arch = Arch {
    audit: AUDIT_ARCH_X86_64,
    wide: true,
    number: x86_64_number,
};

#[cfg(target_arch = "aarch64")]
const NATIVE: Arch = Arch {
    audit: AUDIT_ARCH_AARCH64,
    wide: true,
    number: aarch64_number,
};

/// The `SCMP_ARCH_*` name of the native architecture.
#[cfg(target_arch = "x86_64")]
const NATIVE_NAME: &str = "SCMP_ARCH_X86_64";

#[cfg(target_arch = "aarch64")]
const NATIVE_NAME: &str = "SCMP_ARCH_AARCH64";

/// The 32-bit architectures the native one runs, by `SCMP_ARCH_*` name.
#[cfg(target_arch = "x86_64")]
const COMPAT: &[(&str, Arch)] = &[(
    "SCMP_ARCH_X86",
    Arch {
        audit: AUDIT_ARCH_I386,
        wide: false,
        number: i386_number,
    },
)];

#[cfg(target_arch = "aarch64")]
const COMPAT: &[(&str, Arch)] = &[];

/// The kernel's precedence of a return value's action (higher wins).
fn precedence(ret: u32) -> u8 {
    match ret & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_KILL_PROCESS => 7,
        libc::SECCOMP_RET_KILL_THREAD => 6,
        libc::SECCOMP_RET_TRAP => 5,
        libc::SECCOMP_RET_ERRNO => 4,
        libc::SECCOMP_RET_TRACE => 3,
        libc::SECCOMP_RET_LOG => 2,
        _ => 1,
    }
}

/// The filter's return value of `action` (with `errno` for ERRNO and TRACE); `at` names the
/// field for errors.
fn action_ret(action: SeccompAction, errno: Option<u32>, at: &str) -> Result<u32, SeccompError> {
    let data = match errno {
        Some(e) if e > libc::SECCOMP_RET_DATA => return Err(SeccompError::Errno(at.into(), e)),
        e => e.unwrap_or(EPERM),
    };
    Ok(match action {
        SeccompAction::Kill | SeccompAction::KillThread => libc::SECCOMP_RET_KILL_THREAD,
        SeccompAction::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        SeccompAction::Trap => libc::SECCOMP_RET_TRAP,
        SeccompAction::Errno => libc::SECCOMP_RET_ERRNO | data,
        SeccompAction::Trace => libc::SECCOMP_RET_TRACE | data,
        SeccompAction::Log => libc::SECCOMP_RET_LOG,
        SeccompAction::Allow => libc::SECCOMP_RET_ALLOW,
        SeccompAction::Notify => return Err(SeccompError::Notify(at.into())),
    })
}

/// One rule of one system call: conditions that must all hold, and the return value.
#[derive(Debug, Clone)]
struct Rule {
    conds: Vec<SeccompArg>,
    ret: u32,
}

/// Compiles `profile` for this machine's architecture.
pub fn compile(profile: &Seccomp) -> Result<Filter, SeccompError> {
    let default = action_ret(
        profile.default_action,
        profile.default_errno_ret,
        "defaultAction",
    )?;
    let mut flags: libc::c_ulong = 0;
    for f in &profile.flags {
        match f.as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => flags |= libc::SECCOMP_FILTER_FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            "SECCOMP_FILTER_FLAG_TSYNC" | "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => {
                tracing::debug!("seccomp flag {f} ignored (no meaning for one new process)");
            }
            _ => return Err(SeccompError::Flag(f.clone())),
        }
    }
    let mut arches = vec![&NATIVE];
    let mut x32 = false;
    for name in &profile.architectures {
        if !KNOWN_ARCHES.contains(&name.as_str()) {
            return Err(SeccompError::Arch(name.clone()));
        }
        if let Some((_, arch)) = COMPAT.iter().find(|(n, _)| n == name) {
            if !arches.iter().any(|a| a.audit == arch.audit) {
                arches.push(arch);
            }
        } else if name == "SCMP_ARCH_X32" {
            x32 = cfg!(target_arch = "x86_64");
        } else if name == "SCMP_ARCH_NATIVE" || name == NATIVE_NAME {
            // Always filtered.
        } else {
            tracing::debug!("seccomp architecture {name}: its calls cannot occur here, ignored");
        }
    }
    // Rules in profile order, checked once for every architecture.
    let mut rules: Vec<(&[String], Vec<Rule>)> = Vec::new();
    for (i, s) in profile.syscalls.iter().enumerate() {
        let at = format!("syscalls[{i}]");
        let ret = action_ret(s.action, s.errno_ret, &format!("{at}.action"))?;
        for (a, arg) in s.args.iter().enumerate() {
            if arg.index > 5 {
                return Err(SeccompError::ArgIndex(format!("{at}.args[{a}]"), arg.index));
            }
        }
        if ret == default {
            rules.push((&s.names, Vec::new()));
            continue;
        }
        let repeated = s
            .args
            .iter()
            .enumerate()
            .any(|(a, x)| s.args[..a].iter().any(|y| y.index == x.index));
        let split = if repeated {
            s.args
                .iter()
                .map(|c| Rule {
                    conds: vec![*c],
                    ret,
                })
                .collect()
        } else {
            vec![Rule {
                conds: s.args.clone(),
                ret,
            }]
        };
        rules.push((&s.names, split));
    }
    // runc's ENOSYS stub: unless the default action lets calls through, or is ENOSYS already.
    let stub = !matches!(
        profile.default_action,
        SeccompAction::Allow | SeccompAction::Log | SeccompAction::Trace
    ) && profile.default_errno_ret != Some(ENOSYS);
    let mut unknown: Vec<&str> = Vec::new();
    let mut sections = Vec::new();
    for arch in &arches {
        let mut by_nr: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
        let mut last = None;
        for (names, split) in &rules {
            for name in names.iter() {
                let Some(nr) = (arch.number)(name) else {
                    if arch.audit == NATIVE.audit {
                        unknown.push(name);
                    }
                    continue;
                };
                last = last.max(Some(nr));
                if !split.is_empty() {
                    by_nr.entry(nr).or_default().extend(split.iter().cloned());
                }
            }
        }
        for list in by_nr.values_mut() {
            list.sort_by_key(|r| std::cmp::Reverse(precedence(r.ret)));
        }
        sections.push(Section {
            arch,
            by_nr,
            enosys_above: last.filter(|_| stub),
        });
    }
    let unknown: Vec<&str> = unknown
        .into_iter()
        .filter(|n| !arches.iter().any(|a| (a.number)(n).is_some()))
        .collect();
    if !unknown.is_empty() {
        tracing::debug!(
            "seccomp: unknown system calls skipped: {}",
            unknown.join(" ")
        );
    }
    let x32_ret = if x32 { RET_ENOSYS } else { BAD_ARCH };
    let program = generate(&sections, default, x32_ret)?;
    let len = u16::try_from(program.len()).map_err(|_| SeccompError::TooLong(program.len()))?;
    Ok(Filter {
        program,
        len,
        flags,
    })
}

/// The rules of one architecture.
struct Section<'a> {
    arch: &'a Arch,
    by_nr: BTreeMap<u32, Vec<Rule>>,
    /// runc's stub: numbers above this get ENOSYS.
    enosys_above: Option<u32>,
}

/// A jump target, resolved when the program is assembled.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// A program being written: instructions, and jumps to labels placed later.
#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

enum Op {
    Insn(libc::sock_filter),
    /// An unconditional jump (32-bit offset: jumps of any length).
    Goto(Label),
    Mark(Label),
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn insn(&mut self, code: u16, k: u32, jt: u8, jf: u8) {
        self.ops
            .push(Op::Insn(libc::sock_filter { code, jt, jf, k }));
    }

    fn load(&mut self, offset: u32) {
        self.insn(LD_ABS, offset, 0, 0);
    }

    fn ret(&mut self, k: u32) {
        self.insn(RET, k, 0, 0);
    }

    fn goto(&mut self, l: Label) {
        self.ops.push(Op::Goto(l));
    }

    fn mark(&mut self, l: Label) {
        self.ops.push(Op::Mark(l));
    }

    /// `if (A <cmp> k) goto l`. Conditional jumps only skip one instruction; the long jump is
    /// a `JA`, so no offset ever overflows the 8-bit `jt`/`jf`.
    fn jump_if(&mut self, cmp: u16, k: u32, l: Label) {
        self.insn(cmp, k, 0, 1);
        self.goto(l);
    }

    /// `if !(A <cmp> k) goto l`.
    fn jump_unless(&mut self, cmp: u16, k: u32, l: Label) {
        self.insn(cmp, k, 1, 0);
        self.goto(l);
    }

    fn assemble(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut at = vec![0usize; self.labels];
        let mut pc = 0;
        for op in &self.ops {
            match op {
                Op::Mark(l) => at[l.0] = pc,
                Op::Insn(_) | Op::Goto(_) => pc += 1,
            }
        }
        if pc > MAX_INSNS {
            return Err(SeccompError::TooLong(pc));
        }
        let mut out = Vec::with_capacity(pc);
        for op in self.ops {
            match op {
                Op::Mark(_) => {}
                Op::Insn(i) => out.push(i),
                Op::Goto(l) => {
                    // Labels are placed after their jumps (forward only), and pc <= 4096.
                    let k = at[l.0]
                        .checked_sub(out.len() + 1)
                        .and_then(|d| u32::try_from(d).ok())
                        .expect("jumps go forward");
                    out.push(libc::sock_filter {
                        code: JA,
                        jt: 0,
                        jf: 0,
                        k,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Where a system call number leads: straight to a return value, or to its rules.
#[derive(Clone, Copy)]
enum Target {
    Ret(u32),
    Rules(Label),
}

fn generate(
    sections: &[Section<'_>],
    default: u32,
    x32_ret: u32,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut asm = Asm::default();
    let to_default = asm.label();
    let to_enosys = asm.label();
    let to_x32 = asm.label();
    asm.load(ARCH);
    let starts: Vec<Label> = sections.iter().map(|_| asm.label()).collect();
    for (s, start) in sections.iter().zip(&starts) {
        asm.jump_if(JEQ, s.arch.audit, *start);
    }
    asm.ret(BAD_ARCH);
    for (s, start) in sections.iter().zip(starts) {
        asm.mark(start);
        asm.load(NR);
        if s.arch.audit == AUDIT_ARCH_X86_64 {
            asm.jump_if(JGE, X32_BIT, to_x32);
        }
        if let Some(last) = s.enosys_above {
            asm.jump_if(JGT, last, to_enosys);
        }
        let mut blocks = Vec::new();
        let targets: Vec<(u32, Target)> = s
            .by_nr
            .iter()
            .map(|(nr, rules)| match rules.first() {
                Some(r) if r.conds.is_empty() => (*nr, Target::Ret(r.ret)),
                _ => {
                    let l = asm.label();
                    blocks.push((l, rules));
                    (*nr, Target::Rules(l))
                }
            })
            .collect();
        dispatch(&mut asm, &targets, to_default);
        for (l, rules) in blocks {
            asm.mark(l);
            for r in rules {
                if r.conds.is_empty() {
                    asm.ret(r.ret);
                    break;
                }
                let next = asm.label();
                for c in &r.conds {
                    condition(&mut asm, c, s.arch.wide, next);
                }
                asm.ret(r.ret);
                asm.mark(next);
            }
            asm.goto(to_default);
        }
    }
    asm.mark(to_default);
    asm.ret(default);
    asm.mark(to_enosys);
    asm.ret(RET_ENOSYS);
    asm.mark(to_x32);
    asm.ret(x32_ret);
    asm.assemble()
}

/// A binary search on the system call number in A, over `targets` sorted by number: about
/// 2·log2(n) instructions run per call instead of up to 2·n.
fn dispatch(asm: &mut Asm, targets: &[(u32, Target)], default: Label) {
    if targets.len() <= 4 {
        for (nr, t) in targets {
            match t {
                Target::Ret(k) => {
                    asm.insn(JEQ, *nr, 0, 1);
                    asm.ret(*k);
                }
                Target::Rules(l) => asm.jump_if(JEQ, *nr, *l),
            }
        }
        asm.goto(default);
        return;
    }
    let mid = targets.len() / 2;
    let upper = asm.label();
    asm.jump_if(JGE, targets[mid].0, upper);
    dispatch(asm, &targets[..mid], default);
    asm.mark(upper);
    dispatch(asm, &targets[mid..], default);
}

/// The high and low 32-bit halves of `v`.
fn halves(v: u64) -> (u32, u32) {
    let b = v.to_le_bytes();
    (
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    )
}

/// Jumps to `fail` unless argument condition `c` holds; falls through when it does. On a
/// 64-bit architecture both halves of the argument are compared (the high one first), on a
/// 32-bit one the low half only.
fn condition(asm: &mut Asm, c: &SeccompArg, wide: bool, fail: Label) {
    // seccomp_data.args[i] is a u64 in the machine's byte order.
    let base = ARGS + 8 * c.index;
    let (hi_at, lo_at) = if cfg!(target_endian = "little") {
        (base + 4, base)
    } else {
        (base, base + 4)
    };
    let (vhi, vlo) = halves(c.value);
    if c.op == SeccompOp::MaskedEq {
        let (whi, wlo) = halves(c.value_two);
        if wide {
            asm.load(hi_at);
            asm.insn(AND_K, vhi, 0, 0);
            asm.jump_unless(JEQ, whi, fail);
        }
        asm.load(lo_at);
        asm.insn(AND_K, vlo, 0, 0);
        asm.jump_unless(JEQ, wlo, fail);
        return;
    }
    let pass = asm.label();
    if wide {
        asm.load(hi_at);
        match c.op {
            SeccompOp::Eq => asm.jump_unless(JEQ, vhi, fail),
            SeccompOp::Ne => asm.jump_unless(JEQ, vhi, pass),
            SeccompOp::Gt | SeccompOp::Ge => {
                asm.jump_if(JGT, vhi, pass);
                asm.jump_unless(JEQ, vhi, fail);
            }
            SeccompOp::Lt | SeccompOp::Le => {
                asm.jump_if(JGT, vhi, fail);
                asm.jump_unless(JEQ, vhi, pass);
            }
            SeccompOp::MaskedEq => unreachable!("handled above"),
        }
    }
    // The high halves are equal (or not compared): the low halves decide.
    asm.load(lo_at);
    match c.op {
        SeccompOp::Eq => asm.jump_unless(JEQ, vlo, fail),
        SeccompOp::Ne => asm.jump_if(JEQ, vlo, fail),
        SeccompOp::Gt => asm.jump_unless(JGT, vlo, fail),
        SeccompOp::Ge => asm.jump_unless(JGE, vlo, fail),
        SeccompOp::Lt => asm.jump_if(JGE, vlo, fail),
        SeccompOp::Le => asm.jump_if(JGT, vlo, fail),
        SeccompOp::MaskedEq => unreachable!("handled above"),
    }
    asm.mark(pass);
}

/// The tests use x86_64's and i386's numbers (and i386 calls from x86_64).
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use msb_protocol::seccomp::SeccompSyscall;

    /// A classic-BPF interpreter for the instructions [`generate`] uses: what the kernel would
    /// return for a call `nr` of architecture `arch` with `args`.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let k = usize::try_from(i.k).unwrap();
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_ABS => a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap()),
                AND_K => a &= i.k,
                JA => pc += k,
                JEQ => pc += jump(a == i.k),
                JGT => pc += jump(a > i.k),
                JGE => pc += jump(a >= i.k),
                RET => return i.k,
                c => panic!("instruction {c:#x} at {}", pc - 1),
            }
        }
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const DENY: u32 = libc::SECCOMP_RET_ERRNO | EPERM;
    const X86_64: u32 = AUDIT_ARCH_X86_64;

    fn profile(json: &str) -> Seccomp {
        serde_json::from_value(oci_keys(serde_json::from_str(json).unwrap())).unwrap()
    }

    /// An OCI profile (camelCase keys) as the protocol's (snake_case).
    fn oci_keys(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let k = match k.as_str() {
                            "defaultAction" => "default_action".to_owned(),
                            "defaultErrnoRet" => "default_errno_ret".to_owned(),
                            "errnoRet" => "errno_ret".to_owned(),
                            "valueTwo" => "value_two".to_owned(),
                            _ => k,
                        };
                        (k, oci_keys(v))
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(oci_keys).collect()),
            v => v,
        }
    }

    fn nr(name: &str) -> u32 {
        (NATIVE.number)(name).unwrap()
    }

    #[test]
    fn instruction_codes_are_the_kernels() {
        let c = |x: u16| u32::from(x);
        assert_eq!(c(LD_ABS), libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
        assert_eq!(c(AND_K), libc::BPF_ALU | libc::BPF_AND | libc::BPF_K);
        assert_eq!(c(JA), libc::BPF_JMP | libc::BPF_JA);
        assert_eq!(c(JEQ), libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
        assert_eq!(c(JGT), libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K);
        assert_eq!(c(JGE), libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K);
        assert_eq!(c(RET), libc::BPF_RET | libc::BPF_K);
    }

    /// containerd 1.7's RuntimeDefault (`contrib/seccomp`, as `ctr run --seccomp` of 1.7.24
    /// writes it into the spec): what its rules say, for each architecture it lists.
    #[test]
    fn containerd_runtime_default_decides_as_its_rules_say() {
        let p = profile(include_str!(
            "../testdata/containerd-1.7-runtime-default.json"
        ));
        let f = compile(&p).unwrap();
        let prog = f.instructions();
        assert!(prog.len() < 2500, "{} instructions", prog.len());
        let x = |name: &str, args: [u64; 6]| run(prog, X86_64, nr(name), args);
        let none = [0; 6];
        let arg0 = |v: u64| [v, 0, 0, 0, 0, 0];
        for name in [
            "read",
            "write",
            "getpid",
            "mkdir",
            "execve",
            "exit_group",
            "arch_prctl",
        ] {
            assert_eq!(x(name, none), ALLOW, "{name}");
        }
        for name in [
            "reboot",
            "mount",
            "unshare",
            "sethostname",
            "kexec_load",
            "bpf",
        ] {
            assert_eq!(x(name, none), DENY, "{name}");
        }
        assert_eq!(x("clone3", none), libc::SECCOMP_RET_ERRNO | ENOSYS);
        // personality: a few personas only, compared on 64 bits.
        for (persona, want) in [
            (0, ALLOW),
            (8, ALLOW),
            (0x2_0000, ALLOW),
            (0xffff_ffff, ALLOW),
            (1, DENY),
            (0xffff_ffff_ffff_ffff, DENY),
            (0x1_0000_0000, DENY),
        ] {
            assert_eq!(x("personality", arg0(persona)), want, "{persona:#x}");
        }
        // clone: no namespace flags (mask 0x7E020000 must give 0).
        let sigchld = 17;
        assert_eq!(x("clone", arg0(sigchld)), ALLOW);
        assert_eq!(x("clone", arg0(0x2_0000 | sigchld)), DENY, "CLONE_NEWNS");
        assert_eq!(
            x("clone", arg0(0x1000_0000 | sigchld)),
            DENY,
            "CLONE_NEWUSER"
        );
        // socket: anything but AF_VSOCK (40).
        assert_eq!(x("socket", arg0(2)), ALLOW);
        assert_eq!(x("socket", arg0(40)), DENY);
        // runc's stub: numbers past the profile's largest are ENOSYS, not EPERM.
        let enosys = libc::SECCOMP_RET_ERRNO | ENOSYS;
        assert_eq!(run(prog, X86_64, 1000, none), enosys);
        // x32 (listed): ENOSYS, as the guest kernel (x32 off) answers.
        assert_eq!(run(prog, X86_64, X32_BIT | nr("getpid"), none), enosys);
        // i386 (listed): its own numbers.
        let i386 = |name: &str| run(prog, AUDIT_ARCH_I386, i386_number(name).unwrap(), none);
        for name in ["getpid", "socketcall", "_llseek", "mmap2", "write"] {
            assert_eq!(i386(name), ALLOW, "i386 {name}");
        }
        assert_eq!(i386("reboot"), DENY);
        assert_eq!(i386("clone3"), libc::SECCOMP_RET_ERRNO | ENOSYS);
        // Any other architecture: killed (libseccomp's default).
        assert_eq!(
            run(prog, 0xC000_00B7, 20, none),
            libc::SECCOMP_RET_KILL_THREAD
        );
    }

    #[test]
    fn comparisons_are_unsigned_on_64_bits_and_32_on_i386() {
        let ops = [
            ("SCMP_CMP_EQ", SeccompOp::Eq),
            ("SCMP_CMP_NE", SeccompOp::Ne),
            ("SCMP_CMP_LT", SeccompOp::Lt),
            ("SCMP_CMP_LE", SeccompOp::Le),
            ("SCMP_CMP_GT", SeccompOp::Gt),
            ("SCMP_CMP_GE", SeccompOp::Ge),
        ];
        let values: [u64; 8] = [
            0,
            1,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x2_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ];
        let holds = |op: SeccompOp, arg: u64, v: u64| match op {
            SeccompOp::Eq => arg == v,
            SeccompOp::Ne => arg != v,
            SeccompOp::Lt => arg < v,
            SeccompOp::Le => arg <= v,
            SeccompOp::Gt => arg > v,
            SeccompOp::Ge => arg >= v,
            SeccompOp::MaskedEq => unreachable!(),
        };
        for (name, op) in ops {
            for v in values {
                // `getpid` denied when arg 2 compares as asked, on both architectures.
                let p = profile(&format!(
                    r#"{{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                    "syscalls": [{{"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                    "args": [{{"index": 2, "value": {v}, "op": "{name}"}}]}}]}}"#
                ));
                let prog = compile(&p).unwrap().program;
                for arg in values {
                    let args = [0, 0, arg, 0, 0, 0];
                    let want = if holds(op, arg, v) { DENY } else { ALLOW };
                    assert_eq!(
                        run(&prog, X86_64, nr("getpid"), args),
                        want,
                        "{arg:#x} {name} {v:#x}"
                    );
                    let lo = |x: u64| x & 0xffff_ffff;
                    let want = if holds(op, lo(arg), lo(v)) {
                        DENY
                    } else {
                        ALLOW
                    };
                    let i386 = i386_number("getpid").unwrap();
                    let got = run(&prog, AUDIT_ARCH_I386, i386, [0, 0, lo(arg), 0, 0, 0]);
                    assert_eq!(got, want, "i386 {arg:#x} {name} {v:#x}");
                }
            }
        }
    }

    #[test]
    fn masked_eq_takes_the_mask_from_value_and_the_operand_from_value_two() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["umask"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 18446744069414584383, "valueTwo": 18, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        // mask 0xffff_ffff_0000_003f: the high half and the low six bits must be 0x12.
        let prog = compile(&p).unwrap().program;
        let umask = |a: u64| run(&prog, X86_64, nr("umask"), [a, 0, 0, 0, 0, 0]);
        assert_eq!(umask(0o22), ALLOW);
        assert_eq!(umask(0o22 | 0o100), ALLOW, "bits outside the mask");
        assert_eq!(umask(0o27), DENY);
        assert_eq!(umask(0o22 | 1 << 32), DENY, "the high half is compared");
    }

    #[test]
    fn conditions_on_one_argument_are_alternatives_others_must_all_hold() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [
              {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"},
              {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
            {"names": ["tgkill"], "action": "SCMP_ACT_ALLOW", "args": [
              {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
              {"index": 2, "value": 15, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        let prog = compile(&p).unwrap().program;
        let call = |name: &str, args| run(&prog, X86_64, nr(name), args);
        assert_eq!(call("kill", [7, 15, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call("kill", [7, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call("kill", [7, 2, 0, 0, 0, 0]), DENY);
        assert_eq!(call("tgkill", [1, 0, 15, 0, 0, 0]), ALLOW);
        assert_eq!(call("tgkill", [1, 0, 9, 0, 0, 0]), DENY);
        assert_eq!(call("tgkill", [2, 0, 15, 0, 0, 0]), DENY);
    }

    #[test]
    fn per_rule_actions_and_the_most_restrictive_first() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 5, "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["gettid"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getuid"], "action": "SCMP_ACT_TRACE", "errnoRet": 3},
            {"names": ["getgid"], "action": "SCMP_ACT_LOG"},
            {"names": ["getpid"], "action": "SCMP_ACT_KILL"},
            {"names": ["chmod"], "action": "SCMP_ACT_LOG"},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        let f = compile(&p).unwrap();
        let call = |name: &str, a1: u64| run(&f.program, X86_64, nr(name), [0, a1, 0, 0, 0, 0]);
        assert_eq!(call("mkdir", 0), libc::SECCOMP_RET_ERRNO | 13);
        assert_eq!(call("rmdir", 0), DENY);
        assert_eq!(call("getppid", 0), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(call("gettid", 0), libc::SECCOMP_RET_TRAP);
        assert_eq!(call("getuid", 0), libc::SECCOMP_RET_TRACE | 3);
        assert_eq!(call("getgid", 0), libc::SECCOMP_RET_LOG);
        assert_eq!(call("getpid", 0), libc::SECCOMP_RET_KILL_THREAD);
        assert_eq!(call("chmod", 0), DENY, "ERRNO outranks LOG");
        assert_eq!(call("chmod", 0o644), libc::SECCOMP_RET_LOG);
        assert_eq!(call("read", 0), ALLOW);
        // An allowing default: no ENOSYS stub.
        assert_eq!(run(&f.program, X86_64, 1000, [0; 6]), ALLOW);
        // Only the native architecture is listed: i386 and x32 calls are killed.
        let kill = libc::SECCOMP_RET_KILL_THREAD;
        assert_eq!(run(&f.program, AUDIT_ARCH_I386, 20, [0; 6]), kill);
        assert_eq!(run(&f.program, X86_64, X32_BIT | 39, [0; 6]), kill);
    }

    #[test]
    fn unknown_names_and_rules_with_the_default_action_are_skipped() {
        let base = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["getpid", "NAMES"], "action": "SCMP_ACT_ALLOW"}REST]}"#;
        let with = |names: &str, rest: &str| {
            compile(&profile(
                &base.replace("NAMES", names).replace("REST", rest),
            ))
            .unwrap()
            .program
        };
        let plain = with("read", "");
        let eq = |a: &[libc::sock_filter], b: &[libc::sock_filter]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k))
        };
        assert!(eq(&with("read\", \"no_such_call", ""), &plain));
        assert!(eq(
            &with(
                "read",
                r#", {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}"#
            ),
            // Both are the default action (errno EPERM = 1), so both are skipped; mkdir's
            // number still raises the ENOSYS stub's bound (runc's), in both programs alike.
            &with(
                "read",
                r#", {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}"#
            ),
        ));
        assert_eq!(run(&plain, X86_64, nr("read"), [0; 6]), ALLOW);
        assert_eq!(run(&plain, X86_64, nr("write"), [0; 6]), DENY);
    }

    #[test]
    fn what_cannot_be_applied_is_an_error_naming_it() {
        let err = |json: &str| compile(&profile(json)).unwrap_err().to_string();
        assert_eq!(
            err(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                "action": "SCMP_ACT_NOTIFY"}]}"#
            ),
            "syscalls[0].action: SCMP_ACT_NOTIFY is not supported (no seccomp agent)"
        );
        assert_eq!(
            err(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#
            ),
            "syscalls[0].args[0]: argument index 6 is not one of 0 to 5"
        );
        assert_eq!(
            err(r#"{"defaultAction": "SCMP_ACT_ERRNO", "default_errno_ret": 70000}"#),
            "defaultAction: errno 70000 does not fit the 16 data bits of a seccomp return value"
        );
        assert_eq!(
            err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#),
            "unknown seccomp architecture \"SCMP_ARCH_Z80\""
        );
        assert_eq!(
            err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW"]}"#),
            "seccomp flag \"SECCOMP_FILTER_FLAG_NEW\" is not supported"
        );
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_S390X"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC",
                      "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        );
        assert_eq!(
            compile(&p).unwrap().flags,
            libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        let mut big = profile(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#);
        big.syscalls = (0..1500)
            .map(|v| SeccompSyscall {
                names: vec!["ioctl".into()],
                action: SeccompAction::Allow,
                errno_ret: None,
                args: vec![SeccompArg {
                    index: 1,
                    value: v,
                    value_two: 0,
                    op: SeccompOp::Eq,
                }],
            })
            .collect();
        assert!(matches!(compile(&big), Err(SeccompError::TooLong(_))));
    }

    /// A system call from a forked child: its result, or `-errno`.
    fn sys(nr: libc::c_long, a: libc::c_long, b: libc::c_long) -> i64 {
        // SAFETY: the calls used here take integers or a pointer to a live C string.
        let r = unsafe { libc::syscall(nr, a, b) };
        if r == -1 {
            // SAFETY: reading this thread's errno.
            -i64::from(unsafe { *libc::__errno_location() })
        } else {
            r
        }
    }

    /// An i386 system call (`int 0x80`) from this 64-bit process: its result or `-errno`.
    fn int80(nr: u32, a: u32, b: u32) -> i64 {
        let ret: u32;
        // SAFETY: `int 0x80` is the i386 system call entry; rbx (reserved by LLVM) is swapped
        // in and out around it, and the registers the kernel may clobber are declared.
        unsafe {
            std::arch::asm!(
                "xchg {a}, rbx",
                "int 0x80",
                "xchg {a}, rbx",
                a = inout(reg) u64::from(a) => _,
                inlateout("eax") nr => ret,
                in("ecx") b,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            );
        }
        i64::from(i32::from_ne_bytes(ret.to_ne_bytes()))
    }

    /// Forks a child that runs `body` (raw system calls only: this process has threads) and
    /// writes what it returns to a pipe; its wait status and the values.
    fn in_child<const N: usize>(body: impl Fn() -> [i64; N]) -> (i32, Vec<i64>) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls on memory prepared before the fork, then
        // _exits; the parent closes its copy of the write end.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let out = body();
            // SAFETY: writing a stack array to the pipe, then leaving without destructors.
            unsafe {
                libc::write(fds[1], out.as_ptr().cast(), std::mem::size_of_val(&out));
                libc::_exit(0)
            }
        }
        // SAFETY: closing our copy of the write end (so the read ends with the child), and
        // taking the read end, ours alone from here on.
        let mut read = unsafe {
            libc::close(fds[1]);
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0])
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut read, &mut bytes).unwrap();
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let values = bytes
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        (status, values)
    }

    /// Whether this kernel runs i386 system calls of a 64-bit process (IA32 emulation).
    fn ia32_available() -> bool {
        let (status, v) = in_child(|| [int80(20, 0, 0), sys(libc::SYS_getpid, 0, 0)]);
        status == 0 && v.len() == 2 && v[0] == v[1]
    }

    fn no_new_privs() {
        // SAFETY: a prctl on this (child) thread.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    }

    /// The host kernel runs a compiled profile: denials with EPERM, an errno of the rule's,
    /// argument conditions, unknown names skipped, runc's ENOSYS stub, i386 calls by their own
    /// numbers.
    #[test]
    fn the_kernel_applies_a_compiled_profile() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
              {"names": ["write", "exit_group", "exit", "getpid", "no_such_call"],
               "action": "SCMP_ACT_ALLOW"},
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
              {"names": ["umask"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 63, "valueTwo": 18, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
              {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
        );
        let filter = compile(&p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path =
            std::ffi::CString::new(dir.path().join("d").into_os_string().into_encoded_bytes())
                .unwrap();
        let ia32 = ia32_available();
        let (status, v) = in_child(|| {
            no_new_privs();
            let installed = filter.install();
            let mkdir = sys(libc::SYS_mkdir, path.as_ptr() as libc::c_long, 0o755);
            let (i386_getpid, i386_mkdir) = if ia32 {
                (int80(20, 0, 0), int80(39, 0, 0))
            } else {
                (0, 0)
            };
            [
                installed,
                sys(libc::SYS_getpid, 0, 0),
                mkdir,
                sys(libc::SYS_personality, 0xffff_ffff, 0),
                sys(libc::SYS_personality, 0, 0),
                sys(libc::SYS_umask, 0o22, 0),
                sys(libc::SYS_umask, 0o27, 0),
                sys(libc::SYS_getppid, 0, 0),
                sys(libc::SYS_gettid, 0, 0),
                sys(1000, 0, 0),
                i386_getpid,
                i386_mkdir,
            ]
        });
        assert_eq!(status, 0, "{v:?}");
        let eperm = -i64::from(libc::EPERM);
        let enosys = -i64::from(libc::ENOSYS);
        assert_eq!(v[0], 0, "installed");
        assert!(v[1] > 0, "getpid allowed: {v:?}");
        assert_eq!(v[2], eperm, "mkdir denied");
        assert!(!dir.path().join("d").exists());
        assert!(v[3] >= 0, "personality(0xffffffff) allowed: {v:?}");
        assert_eq!(v[4], eperm, "personality(0) denied");
        assert!(v[5] >= 0, "umask(022) allowed: {v:?}");
        assert_eq!(v[6], eperm, "umask(027) denied");
        assert_eq!(v[7], enosys, "getppid: the rule's errno");
        assert_eq!(v[8], eperm, "gettid: errnoRet 1");
        assert_eq!(v[9], enosys, "past the profile's largest number: ENOSYS");
        if ia32 {
            assert_eq!(v[10], v[1], "i386 getpid allowed");
            assert_eq!(v[11], eperm, "i386 mkdir denied");
        } else {
            msb_test_e2e::require("the host kernel runs no i386 system calls (IA32 emulation)");
        }
    }

    /// An architecture the profile does not list: its calls kill the thread (libseccomp's
    /// default), here the whole single-threaded child, with SIGSYS.
    #[test]
    fn an_unlisted_architecture_is_killed() {
        if !ia32_available() {
            msb_test_e2e::require("the host kernel runs no i386 system calls (IA32 emulation)");
            return;
        }
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"],
            "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        let filter = compile(&p).unwrap();
        let (status, v) = in_child(|| {
            no_new_privs();
            [filter.install(), int80(20, 0, 0)]
        });
        assert!(v.is_empty(), "the child went on: {v:?}");
        assert!(libc::WIFSIGNALED(status), "{status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
