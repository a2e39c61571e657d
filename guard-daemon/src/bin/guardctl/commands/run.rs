//! `guardctl run --policy FILE [--grant ITEM]... | --policy-name NAME | --learn [--policy FILE] [--name N] [--audit] -- CMD ARGS...`
//!
//! With `--policy-name` the policy is one of guardd's own (its policy
//! directory): guardctl asks guardd for its text and builds the same plan
//! guardd compiles.
//! Validates the policy (exit 2 on error, before anything starts), asks
//! guardd for a scope, starts CMD inside it through the launcher, forwards
//! signals, reports the exit to guardd and exits with CMD's status. One
//! summary line goes to stderr.

use std::{ffi::OsString, path::PathBuf};

use clap::Args;
use guard_daemon::{
    api::{self, ApiError, ExitStatus, OpenRequest, PolicyReply, PolicyRequest, Request},
    launch::{
        self, Launch,
        builder::home_dir,
        preflight::{self, Accepted, PolicyFile, PolicyFileError},
        session::{OpenError, Session},
        supervise::{self, Signals},
    },
    policy::{Vars, grant::GrantItem},
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The policy file (TOML).
    #[arg(
        long,
        required_unless_present_any = ["policy_name", "learn"],
        conflicts_with = "policy_name"
    )]
    policy: Option<PathBuf>,
    /// One of guardd's named policies (its `--policy-dir`), chosen on the
    /// node rather than shipped with the workload.
    #[arg(long, value_name = "NAME")]
    policy_name: Option<String>,
    /// Agent name in the journal (default: the policy's name).
    #[arg(long)]
    name: Option<String>,
    /// Allow everything, but record what the policy would have denied.
    #[arg(long)]
    audit: bool,
    /// Learn mode: run with files and programs observed instead of
    /// confined (no Landlock, no exec views) and the network audited, and
    /// journal what the agent does, for `guardctl policy draft`. With
    /// `--policy`, only what that policy would refuse is recorded.
    #[arg(long, conflicts_with_all = ["policy_name", "audit"])]
    learn: bool,
    /// Start even though these layers cannot be enforced here (comma list of
    /// `landlock`, `unix`, `limits`, `exec`, or `all`). The degradation is
    /// journaled.
    #[arg(long, value_delimiter = ',')]
    allow_degraded: Vec<String>,
    /// Add to the policy for this run (repeatable): `net:DEST` (as in
    /// `guardctl grant`), `read:PATH`, `write:PATH`, `exec:PATH`. The
    /// start record lists them. Not with --policy-name (the node's policy).
    #[arg(long, value_name = "ITEM", requires = "policy")]
    grant: Vec<String>,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// With `GUARDCTL_TIMING` set, prints how long each launch phase took (for
/// investigating launch latency; off by default).
struct Timing(Option<std::time::Instant>);

impl Timing {
    fn new() -> Self {
        Timing(std::env::var_os("GUARDCTL_TIMING").map(|_| std::time::Instant::now()))
    }

    fn mark(&self, what: &str) {
        if let Some(t) = self.0 {
            eprintln!(
                "guardctl timing: {:>8.3} ms  {what}",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

/// A named policy, as guardd holds it now.
fn fetch_named(cli: &Cli, name: &str) -> Result<PolicyReply, i32> {
    let mut conn = connect(&cli.socket).or_exit(EXIT_GUARD)?;
    let reply = match conn.call(
        1,
        &Request::Policy(PolicyRequest {
            name: name.to_owned(),
        }),
    ) {
        Ok(m) => m,
        Err(ApiError::Remote { code, message }) if code == api::code::POLICY => {
            return Err(print_all([format!("--policy-name {name}: {message}")]));
        }
        Err(e) => return Err(describe(&e)).or_exit(EXIT_GUARD),
    };
    serde_json::from_value(serde_json::Value::Object(reply))
        .map_err(|e| format!("guardd's answer for policy {name:?} does not parse: {e}"))
        .or_exit(EXIT_GUARD)
}

pub fn run(cli: &Cli, args: &RunArgs) -> i32 {
    launch(cli, args).unwrap_or_else(|code| code)
}

/// The agent name of a learn run: `--name`, else the program's file name
/// (without a policy the agent would otherwise be named after the empty
/// policy, and every learn run would merge into one draft).
fn learn_name(args: &RunArgs) -> Option<String> {
    if !args.learn {
        return None;
    }
    args.name.clone().or_else(|| {
        args.command
            .first()
            .map(|c| {
                std::path::Path::new(c)
                    .file_name()
                    .unwrap_or(c)
                    .to_string_lossy()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|n| !n.is_empty())
    })
}

/// Prints `guardctl: ERROR` and gives guardctl's exit code for it.
trait OrExit<T> {
    fn or_exit(self, code: i32) -> Result<T, i32>;
    /// The same, once guardd opened a scope: ends it first.
    fn or_abort(self, session: &mut Session, code: i32) -> Result<T, i32>;
}

impl<T, E: std::fmt::Display> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: i32) -> Result<T, i32> {
        self.map_err(|e| {
            fail(e);
            code
        })
    }

    fn or_abort(self, session: &mut Session, code: i32) -> Result<T, i32> {
        self.map_err(|e| {
            fail(e);
            session.abort(code)
        })
    }
}

/// Each message on its own line, as policy errors are printed.
fn print_all(msgs: impl IntoIterator<Item = impl std::fmt::Display>) -> i32 {
    for m in msgs {
        eprintln!("{m}");
    }
    EXIT_USAGE
}

fn launch(cli: &Cli, args: &RunArgs) -> Result<i32, i32> {
    let timing = Timing::new();
    let grants = args
        .grant
        .iter()
        .map(|g| GrantItem::parse(g).map_err(|e| format!("--grant: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .or_exit(EXIT_USAGE)?;
    let read = match (&args.policy, &args.policy_name) {
        (Some(file), _) => PolicyFile::read_granted(file, &file.display().to_string(), &grants),
        (None, Some(name)) => {
            let reply = fetch_named(cli, name)?;
            PolicyFile::from_named(&reply)
        }
        (None, None) if args.learn => {
            PolicyFile::learn_empty(&learn_name(args).unwrap_or_default())
        }
        (None, None) => return Err("give --policy FILE or --policy-name NAME").or_exit(EXIT_USAGE),
    };
    let PolicyFile { text, path, policy } = match read {
        Err(PolicyFileError::Invalid(errs)) => return Err(print_all(errs)),
        other => other.or_exit(EXIT_USAGE)?,
    };
    let path_str = path.display().to_string();
    if let Some(name) = &args.name
        && let Some(problem) = preflight::agent_name_problem(name)
    {
        return Err(format!("--name: {problem}")).or_exit(EXIT_USAGE);
    }
    let workdir = std::env::current_dir()
        .map_err(|e| format!("cannot read the current directory: {e}"))
        .or_exit(EXIT_GUARD)?;
    let home = home_dir();
    let vars = |tmp: PathBuf| Vars {
        workdir: workdir.clone(),
        home: home.clone(),
        tmp,
    };
    let tmp_placeholder = PathBuf::from(preflight::TMP_PLACEHOLDER);
    let mut first_plan =
        preflight::check_plan(&policy, &vars(tmp_placeholder), &path_str).map_err(print_all)?;
    if args.learn {
        launch::learn(&mut first_plan);
    }
    let accepted = Accepted::parse(&args.allow_degraded).or_exit(EXIT_USAGE)?;
    timing.mark("policy parsed and compiled");

    let cmd0 = args.command[0].to_string_lossy().into_owned();
    let path_env = std::env::var("PATH").ok();
    let program = launch::resolve_program(&cmd0, path_env.as_deref())
        .ok_or_else(|| {
            let path = path_env.as_deref();
            let path = path.unwrap_or("unset; searched /usr/local/bin:/usr/bin:/bin");
            format!("{cmd0}: command not found in PATH as guardctl searched it (PATH={path})")
        })
        .or_exit(127)?;
    let argv: Vec<String> = (args.command.iter())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let path_env = path_env.as_deref();
    for w in preflight::start_warnings(&first_plan, &program, &argv[1..], &workdir, path_env) {
        eprintln!("guardctl: warning: {w}");
    }
    let layers =
        preflight::host_layers(first_plan.filesystem.restricted, &accepted).or_exit(EXIT_GUARD)?;
    timing.mark("landlock checked");

    let request = OpenRequest {
        policy_name: args.policy_name.clone(),
        policy_path: path.display().to_string(),
        policy_text: text,
        policy_includes: policy.sources.clone(),
        name: learn_name(args).or_else(|| args.name.clone()),
        audit: args.audit || args.learn,
        learn: args.learn,
        argv,
        workdir: workdir.display().to_string(),
        home: home.display().to_string(),
        accept_degraded: args.allow_degraded.clone(),
        launcher_notes: layers.notes.clone(),
        grants: args.grant.clone(),
    };
    let conn = connect(&cli.socket).or_exit(EXIT_GUARD)?;
    let mut session = match Session::open(conn, request) {
        Ok(s) => s,
        Err(OpenError::Policy(message)) => return Err(print_all([message])),
        Err(OpenError::Api(e)) => return Err(describe(&e)).or_exit(EXIT_GUARD),
    };
    timing.mark("scope opened by guardd");
    let scope = session.take_scope().or_abort(&mut session, EXIT_GUARD)?;
    for d in &session.reply.degraded {
        eprintln!("guardctl: warning: degraded: {d}");
    }
    for n in &layers.notes {
        if n.contains("NOT enforced") || n.contains("not restricted") {
            eprintln!("guardctl: warning: {n}");
        }
    }

    let plan = match policy.compile(&vars(PathBuf::from(&session.reply.tmp))) {
        Ok(mut p) => {
            if args.learn {
                launch::learn(&mut p);
            }
            p
        }
        Err(e) => {
            eprintln!("{e}");
            return Err(session.abort(EXIT_USAGE));
        }
    };
    let spec = Launch::new(&program, &args.command, &plan)
        .env(std::env::vars_os())
        .audit(args.audit || args.learn)
        .accept_landlock_degraded(accepted.accepts("landlock"))
        .exec_views(layers.exec_views.then_some(workdir.as_path()))
        .build(&session.reply, scope)
        .or_abort(&mut session, EXIT_GUARD)?;
    timing.mark("landlock ruleset and seccomp filter prepared");
    let signals = Signals::block().or_abort(&mut session, EXIT_GUARD)?;
    let child = launch::spawn(&spec).map_err(|e| {
        fail(preflight::explain_spawn_failure(
            &e, &spec, &plan, &cmd0, &program, path_env,
        ));
        let exec = matches!(e, launch::LaunchError::Exec { .. });
        session.abort(if exec { 127 } else { EXIT_GUARD })
    })?;
    drop(spec);
    timing.mark("agent exec'd");
    session.started(child.pid);
    timing.mark("guardd told the pid");
    let status = signals.wait(&child);
    timing.mark("agent exited");
    // A fresh connection if guardd restarted meanwhile.
    let summary = session.exited(status, || connect(&cli.socket).ok());
    timing.mark("guardd ended the scope");
    supervise::reap(&child);
    eprintln!("{}", session.summary(status, summary.as_ref()));
    if args.learn {
        // Each run of the name adds to the same draft.
        eprintln!(
            "guard: learned; draft a policy from this run: guardctl policy draft --agent {}, or from every run named {:?}: \
             guardctl policy draft --agent {:?}",
            session.reply.agent.id, session.reply.agent.name, session.reply.agent.name
        );
    }
    Ok(match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    })
}
