//! guardctl: start agents under a policy and ask guardd about them.

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit status of guardctl's own failures (unreachable daemon, refused
/// scope), distinct from any status the agent can return through `run`.
pub const EXIT_GUARD: i32 = 125;
/// Invalid policy or arguments.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "guardctl",
    version,
    about = "Run AI agents confined by the kernel, and review what they tried"
)]
pub struct Cli {
    /// guardd's socket.
    #[arg(long, global = true, env = "GUARD_SOCKET", default_value = guard_daemon::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command as an agent confined by a policy.
    Run(commands::run::RunArgs),
    /// Show journal records.
    Logs(commands::logs::LogsArgs),
    /// List live agents.
    Ps(commands::ps::PsArgs),
    /// What agents tried outside their scope and asked for: the queue to
    /// work through, grouped by agent and target.
    Requests(commands::requests::RequestsArgs),
    /// Kill every process of an agent.
    Kill(commands::control::ControlArgs),
    /// Freeze every process of an agent at once.
    Freeze(commands::control::ControlArgs),
    /// Resume a frozen agent.
    Thaw(commands::control::ControlArgs),
    /// Widen a live agent's network scope for a while (operators only).
    Grant(commands::grant::GrantArgs),
    /// End a live grant early.
    Revoke(commands::grant::RevokeArgs),
    /// List live grants.
    Grants(commands::grant::GrantsArgs),
    /// Policy tools.
    Policy(commands::policy::PolicyArgs),
    /// Report what each protection layer amounts to on this host.
    Doctor(commands::doctor::DoctorArgs),
    /// Try a battery of escapes, each a real agent on this host, and report
    /// which walls held and were journaled.
    Selftest(commands::selftest::SelftestArgs),
    /// One attempt of the selftest battery, run inside its scope.
    #[command(hide = true)]
    SelftestProbe(commands::selftest::ProbeArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Run(a) => commands::run::run(&cli, a),
        Command::Logs(a) => commands::logs::run(&cli, a),
        Command::Ps(a) => commands::ps::run(&cli, a),
        Command::Requests(a) => commands::requests::run(&cli, a),
        Command::Kill(a) => commands::control::run(&cli, a, guard_daemon::api::ControlAction::Kill),
        Command::Freeze(a) => {
            commands::control::run(&cli, a, guard_daemon::api::ControlAction::Freeze)
        }
        Command::Thaw(a) => commands::control::run(&cli, a, guard_daemon::api::ControlAction::Thaw),
        Command::Grant(a) => commands::grant::grant(&cli, a),
        Command::Revoke(a) => commands::grant::revoke(&cli, a),
        Command::Grants(a) => commands::grant::grants(&cli, a),
        Command::Policy(a) => commands::policy::run(&cli, a),
        Command::Doctor(a) => commands::doctor::run(&cli, a),
        Command::Selftest(a) => commands::selftest::run(&cli, a),
        Command::SelftestProbe(a) => commands::selftest::probe(a),
    };
    std::process::exit(code);
}
