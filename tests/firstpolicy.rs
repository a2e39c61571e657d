//! A first policy that works (issue 10): the README's example runs a Python
//! agent that uses tempfile, subprocess and pip; refusals at start say why
//! and what to add; `policy check` reports every problem with the messages
//! `run` uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Output};

use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `guardctl policy check FILE` from the test's directory, where `guardctl
/// run` starts (relative paths and `{workdir}` point there).
fn check_in_dir(g: &Guardd, file: &str) -> Output {
    g.ctl_cmd()
        .current_dir(g.dir.path())
        .args(["policy", "check", file])
        .output()
        .unwrap()
}

/// The policy example under "## Writing a policy" in README.md, verbatim.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## Writing a policy")
        .nth(1)
        .expect("README.md has a \"Writing a policy\" section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .expect("the section holds a ```toml block");
    block.split("```").next().unwrap().to_owned()
}

const AGENT: &str = r#"
import json, os, subprocess, sys, tempfile

tmp = os.environ["TMPDIR"]
out = {"tmpdir": tmp, "gettempdir": tempfile.gettempdir()}
with tempfile.NamedTemporaryFile(prefix="agent-", delete=False) as f:
    f.write(b"scratch")
    out["tempfile"] = f.name
d = tempfile.mkdtemp()
out["mkdtemp"] = d
out["listdir"] = sorted(os.listdir(tmp))
with open(os.path.join("work", "note.txt"), "w") as f:
    f.write("hello")
out["echo"] = subprocess.run(["echo", "from a child"], capture_output=True, text=True).stdout
pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
out["pip_version"] = [pip.returncode, pip.stdout, pip.stderr[-400:]]
env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
pl = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"],
                    capture_output=True, text=True, env=env)
out["pip_list"] = [pl.returncode, pl.stdout[:200], pl.stderr[-400:]]
import platform
out["os_release"] = platform.freedesktop_os_release().get("ID")
print(json.dumps(out))
"#;

#[test]
fn the_readme_policy_runs_a_python_agent_with_tempfile_subprocess_and_pip() {
    let g = Guardd::start();
    let work = g.dir.path().join("proj");
    std::fs::create_dir_all(work.join("work")).unwrap();
    std::fs::write(work.join("agent.py"), AGENT).unwrap();
    let policy = g.write_policy("readme", &readme_example());

    let check = g.ctl(&["policy", "check", policy.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));

    let out = g.run_in(&policy, &[], &[PYTHON, "agent.py"], &work);
    assert!(out.status.success(), "{}", describe(&out));
    let line = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        panic!("{e}: {}", describe(&out));
    });
    let tmp = v["tmpdir"].as_str().unwrap();
    assert!(tmp.contains("guard-"), "{v}");
    // tempfile uses TMPDIR (it falls back to the working directory when
    // TMPDIR is not usable), and listing it works.
    assert_eq!(v["gettempdir"], tmp, "{v}");
    assert!(v["tempfile"].as_str().unwrap().starts_with(tmp), "{v}");
    assert!(v["mkdtemp"].as_str().unwrap().starts_with(tmp), "{v}");
    assert_eq!(v["listdir"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        std::fs::read_to_string(work.join("work/note.txt")).unwrap(),
        "hello"
    );
    assert_eq!(v["echo"], "from a child\n", "{v}");
    assert_eq!(v["pip_version"][0], 0, "{v}");
    assert!(
        v["pip_version"][1].as_str().unwrap().starts_with("pip "),
        "{v}"
    );
    assert_eq!(v["pip_list"][0], 0, "{v}");
    assert!(v["pip_list"][1].as_str().unwrap().starts_with('['), "{v}");
    assert!(v["os_release"].is_string(), "{v}");
    // What was refused is only what the policy rightly keeps from the
    // agent: pip's global configuration (it may hold index credentials, so
    // no base grants it) and the home directory. (urllib3's probe for IPv6
    // support binds [::1]:0, an ephemeral port: allowed.)
    let denied = g.logs(&["--verdict", "denied"]);
    for r in &denied {
        let target = r["target"].as_str().unwrap_or_default();
        assert!(
            ["/etc/pip.conf", "/root"].contains(&target) || target.starts_with("/root/"),
            "unexpected refusal {r:#}"
        );
    }
}

#[test]
fn the_example_policies_give_a_usable_tmpdir() {
    let g = Guardd::start();
    for name in ["demo", "coding-agent"] {
        let policy = repo().join(format!("policies/{name}.toml"));
        let out = g.run(
            &policy,
            &[],
            &[
                PYTHON,
                "-c",
                "import os, tempfile; f = tempfile.mkstemp()[1]; \
                 assert f.startswith(os.environ['TMPDIR']), f; print(os.listdir(os.environ['TMPDIR']))",
            ],
        );
        assert!(out.status.success(), "{name}: {}", describe(&out));
        assert_eq!(
            stdout(&out).matches("tmp").count(),
            1,
            "{name}: {}",
            describe(&out)
        );
    }
}

const NO_EXEC: &str = r#"[policy]
name = "no-exec"
include = ["base"]

[filesystem]
read = ["{workdir}"]
"#;

#[test]
fn a_program_outside_exec_is_named_with_what_to_add() {
    let g = Guardd::start();
    let policy = g.write_policy("no-exec", NO_EXEC);
    let out = g.run(&policy, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    let real = std::fs::canonicalize("/bin/true").unwrap();
    let expected = if real == Path::new("/bin/true") {
        "cannot run /bin/true: the policy does not grant exec on /bin/true; add it to [filesystem] exec".to_owned()
    } else {
        format!(
            "cannot run /bin/true: the policy does not grant exec on {} (resolved from /bin/true); add it to [filesystem] exec",
            real.display()
        )
    };
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));

    // demo.toml grants python only.
    let out = g.run(&repo().join("policies/demo.toml"), &[], &["true"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot run true: the policy does not grant exec on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_script_whose_interpreter_is_outside_exec_names_the_interpreter() {
    let g = Guardd::start();
    let dir = g.dir.path();
    let script = dir.join("tool.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = g.write_policy(
        "script",
        "[policy]\nname = \"script\"\ninclude = [\"base\"]\n[filesystem]\nexec = [\"{workdir}/tool.sh\"]\n",
    );
    let out = g.run(&policy, &[], &["./tool.sh"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot run ./tool.sh: {} is a script run by /bin/sh (its #! line), and the policy does not grant exec on {}",
            std::fs::canonicalize(&script).unwrap().display(),
            sh.display()
        )),
        "{err}"
    );

    // `#!/usr/bin/env bash` with env granted and bash not: env starts, and
    // then cannot run bash. guardctl says so before the agent starts.
    std::fs::write(&script, "#!/usr/bin/env bash\nexit 0\n").unwrap();
    let policy = g.write_policy(
        "envscript",
        "[policy]\nname = \"envscript\"\ninclude = [\"base\"]\n[filesystem]\nexec = [\"{workdir}/tool.sh\", \"/usr/bin/env\"]\n",
    );
    let out = g.run(&policy, &[], &["./tool.sh"]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("guardctl: warning: ./tool.sh will not run: ")
            && err.contains("runs bash through /usr/bin/env (its #! line), found in PATH at")
            && err
                .contains("and the policy does not grant exec on it; add it to [filesystem] exec"),
        "{err}"
    );
}

#[test]
fn an_unreadable_script_argument_is_warned_about() {
    let g = Guardd::start();
    let outside = tempfile::tempdir().unwrap();
    let script = outside.path().join("s.py");
    std::fs::write(&script, "print('ran')\n").unwrap();
    let policy = g.write_policy(
        "py",
        "[policy]\nname = \"py\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [\"{workdir}\"]\n",
    );
    let out = g.run(&policy, &[], &[PYTHON, script.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "guardctl: warning: {} is not readable under the policy",
            script.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_program_in_a_directory_its_user_cannot_search_is_explained() {
    let g = Guardd::start();
    let private = g.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::copy("/usr/bin/true", private.join("prog")).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let policy = g.write_policy(
        "dac",
        &format!(
            "[policy]\nname = \"dac\"\ninclude = [\"base\"]\n[filesystem]\nexec = [\"{}/prog\"]\n[process]\nuser = \"nobody\"\n",
            private.display()
        ),
    );
    let prog = private.join("prog");
    let out = g.run(&policy, &[], &[prog.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "cannot search the directory {} (mode 700, owner uid 0); this is the host's file permissions, not the policy",
            private.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policy_check_reports_every_error_at_once() {
    let g = Guardd::start();
    let policy = g.write_policy(
        "bad",
        r#"[policy]
name = "bad"
mode = "strict"

[network]
allow = [
  { cidr = "10.0.0.300/8" },
  { cidr = "127.0.0.1/32", ports = [70000] },
]

[filesystem]
read = ["{nope}/x"]

[process]
memory = "lots"
"#,
    );
    let out = g.ctl(&["policy", "check", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let p = policy.display();
    for want in [
        format!("{p}:3:8: unknown mode"),
        format!("{p}:7:12: "),
        format!("{p}:8:37: port 70000 out of range"),
        format!("{p}:12:9: unknown variable `{{nope}}`"),
        format!("{p}:15:10: invalid memory"),
        format!("{p}: 5 error(s)"),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    // run stops at the same errors, all of them, before starting anything.
    let run = g.run(&policy, &[], &["/bin/true"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(stderr(&run).lines().count(), 5, "{}", stderr(&run));
}

#[test]
fn policy_check_shows_host_rules_and_what_enforces_them() {
    let g = Guardd::start();
    let policy = g.write_policy(
        "names",
        r#"[policy]
name = "names"

[network]
allow = [
  { cidr = "0.0.0.0/0", ports = [443], protocol = "tcp" },
  { host = "api.example.com", ports = [443], protocol = "tcp" },
  { host = "**.pythonhosted.org" },
]

[network.dns]
ttl_floor = 10
max_addresses = 8
answers_allowed = ["127.0.0.0/8"]
"#,
    );
    let out = g.ctl(&["policy", "check", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "network.allow[0]       0.0.0.0/0 tcp 443",
        "network.allow[1]       host api.example.com tcp 443",
        "network.allow[2]       host **.pythonhosted.org tcp+udp any",
        "by name: guardd's resolver for the agent answers only these names and opens each \
         answer's addresses for its TTL (floor 10 s, ceiling 3600 s, at most 8 addresses per \
         name); other names are refused and no query leaves the host; every DNS query of the \
         agent goes to that resolver",
        "except into [network.dns] answers_allowed: 127.0.0.0/8",
        "port 853 only where a rule lists 853 by itself",
        "closed although a broader rule covers them: 8.8.8.8, 8.8.4.4, 1.1.1.1",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // A host rule in a listen rule, a bad pattern and a misplaced table:
    // every error at its place.
    std::fs::write(
        g.dir.path().join("inc.toml"),
        "[network]\nallow = []\n[network.dns]\nttl_floor = 1\n",
    )
    .unwrap();
    let bad = g.write_policy(
        "badnames",
        r#"[policy]
name = "badnames"
include = ["./inc.toml"]
[network]
allow = [{ host = "a..example.com" }]
listen = [{ host = "localhost" }]
"#,
    );
    let out = g.ctl(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let p = bad.display();
    let inc = g.dir.path().join("inc.toml");
    for want in [
        format!(
            "{}:3:1: a [network.dns] table belongs in the policy file itself",
            inc.display()
        ),
        format!("{p}:5:19: host \"a..example.com\": empty label"),
        format!("{p}:6:20: a listen rule takes no `host`"),
        format!("{p}: 3 error(s)"),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
}

#[test]
fn policy_check_and_run_share_the_host_checks() {
    let g = Guardd::start();
    let policy = g.write_policy(
        "host",
        r#"[policy]
name = "host"
include = ["base"]

[filesystem]
exec = ["{workdir}/.venv/bin"]

[process]
user = "no-such-user-guard"
"#,
    );
    let check = check_in_dir(&g, policy.to_str().unwrap());
    assert_eq!(check.status.code(), Some(2));
    let run = g.run(&policy, &[], &["/bin/true"]);
    assert_eq!(run.status.code(), Some(2));
    let p = policy.display();
    let dir = g.dir.path().display();
    let missing = format!(
        "{p}: filesystem.exec[0]: {dir}/.venv/bin does not exist; a rule can only name an existing path"
    );
    let parent = format!("grant its nearest existing parent instead: exec = [\"{dir}\"]");
    let user =
        format!("{p}: process.user: user \"no-such-user-guard\" does not exist on this host");
    for out in [&check, &run] {
        let err = stderr(out);
        assert!(err.contains(&missing), "{err}");
        assert!(err.contains(&parent), "{err}");
        assert!(err.contains("allow_write_exec = true"), "{err}");
        assert!(err.contains(&user), "{err}");
    }
}

#[test]
fn a_runtime_created_virtualenv_works_through_its_parent_grant() {
    // The advice of the missing-path message, followed: the agent creates
    // a virtualenv in its workspace and runs its interpreter.
    let g = Guardd::start();
    let work = g.dir.path().join("proj");
    std::fs::create_dir_all(&work).unwrap();
    let policy = g.write_policy(
        "venv",
        r#"[policy]
name = "venv"
include = ["base", "python"]

[filesystem]
write = ["{workdir}", "{tmp}"]
exec = ["{workdir}"]
allow_write_exec = true
"#,
    );
    let out = g.run_in(
        &policy,
        &[],
        &[
            PYTHON,
            "-c",
            "import os, subprocess, venv; venv.create('.venv', with_pip=False); \
             tool = '.venv/bin/tool'; \
             open(tool, 'w').write('#!' + os.path.abspath('.venv/bin/python') + '\\nimport sys; print(sys.prefix)\\n'); \
             os.chmod(tool, 0o755); \
             print(subprocess.run([tool], capture_output=True, text=True, check=True).stdout.strip())",
        ],
        &work,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).trim().ends_with("/proj/.venv"),
        "{}",
        describe(&out)
    );
}

#[test]
fn policy_check_warns_summarises_and_tells_the_truth() {
    let g = Guardd::start();
    let policy = g.write_policy(
        "risky",
        r#"[policy]
name = "risky"
include = ["base", "python", "shell"]

[filesystem]
read = ["{workdir}"]
write = ["/etc", "{tmp}"]

[process]
capabilities = ["CAP_SYS_ADMIN", "net_bind_service"]
"#,
    );
    let out = g.ctl(&["policy", "check", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("ok — policy \"risky\", mode enforce, 2 warning(s)"),
        "{text}"
    );
    assert!(
        text.contains("warning: process.capabilities keeps CAP_SYS_ADMIN"),
        "{text}"
    );
    assert!(!text.contains("keeps CAP_NET_BIND_SERVICE"), "{text}");
    assert!(
        text.contains("warning: filesystem.write[0] grants write on /etc (a system directory)"),
        "{text}"
    );
    assert!(text.contains("write implies read"), "{text}");
    // Guard does not use Landlock's TCP port rules: no claim that it does.
    assert!(!text.contains("Landlock when ABI"), "{text}");
    assert!(!text.to_lowercase().contains("tcp ports also"), "{text}");
    // Short by default: base paths are counted, not listed.
    assert!(text.contains("base shell"), "{text}");
    assert!(!text.contains("/usr/bin/sort"), "{text}");
    assert!(text.lines().count() < 40, "{text}");
    let long = g.ctl(&["policy", "check", "--paths", policy.to_str().unwrap()]);
    let long = stdout(&long);
    assert!(long.contains("/usr/bin/sort"), "{long}");
    assert!(long.lines().count() > 100, "{long}");
}

#[test]
fn bad_names_and_missing_commands_say_what_is_expected() {
    let g = Guardd::start();
    let policy = repo().join("policies/demo.toml");
    let out = g.run(&policy, &["--name", "two\nlines"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("expected 1-64 bytes of printable characters"),
        "{}",
        stderr(&out)
    );
    let out = g
        .run_cmd(&policy, &[], &["python3"])
        .env("PATH", "/nonexistent-guard:/also-not")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "python3: command not found in PATH as guardctl searched it (PATH=/nonexistent-guard:/also-not)"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn everyday_probes_are_not_refusals() {
    // `id` asks nscd (glibc), and many programs look at /proc/mounts and
    // /proc/filesystems: none of that may fill the journal with refusals.
    let g = Guardd::start();
    let policy = repo().join("policies/coding-agent.toml");
    let out = g.run(
        &policy,
        &[],
        &[
            "/bin/sh",
            "-c",
            "id >/dev/null && ls -l /dev/null >/dev/null && /usr/bin/python3 -c \"\
import os
for p in ('/proc/mounts', '/proc/filesystems'):
    assert not os.path.exists(p), p
print('probed')\"",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "probed");
    let denied = g.logs(&["--verdict", "denied"]);
    assert!(denied.is_empty(), "{denied:#?}");
}

#[test]
fn a_team_include_file_works_beside_the_bases() {
    let g = Guardd::start();
    let dir = g.dir.path().join("policies");
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    let data = g.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("facts.txt"), "team data\n").unwrap();
    std::fs::write(
        dir.join("team-base.toml"),
        format!(
            "include = [\"./shared/tools.toml\"]\n[filesystem]\nread = [{:?}]\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("shared/tools.toml"),
        "[filesystem]\nexec = [\"/usr/bin/cat\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.toml"),
        "[policy]\nname = \"team\"\ninclude = [\"base\", \"./team-base.toml\"]\n",
    )
    .unwrap();
    // Started from another directory, with a relative policy path: the
    // include is found beside the policy, and guardd compiles what guardctl
    // read.
    let out = g.run_in(
        Path::new("policies/agent.toml"),
        &[],
        &["/usr/bin/cat", data.join("facts.txt").to_str().unwrap()],
        g.dir.path(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "team data\n");
    // The include's rules are the policy's own: a refusal names no base.
    let check = check_in_dir(&g, "policies/agent.toml");
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("./shared/tools.toml filesystem.exec[0]"),
        "{}",
        stdout(&check)
    );

    // A cycle and a missing file: precise errors, from check and run alike.
    std::fs::write(
        dir.join("shared/tools.toml"),
        "include = [\"../team-base.toml\", \"./gone.toml\"]\n",
    )
    .unwrap();
    let team = std::fs::canonicalize(dir.join("team-base.toml")).unwrap();
    let tools = std::fs::canonicalize(dir.join("shared/tools.toml")).unwrap();
    let cycle = format!(
        "{}:1:12: include cycle: {} includes {} includes {}",
        tools.display(),
        team.display(),
        tools.display(),
        team.display()
    );
    let gone = format!(
        "{}:1:33: cannot read include file \"./gone.toml\" ({}/gone.toml): No such file or directory",
        tools.display(),
        tools.parent().unwrap().display()
    );
    let run = g.run_in(
        Path::new("policies/agent.toml"),
        &[],
        &["/usr/bin/cat"],
        g.dir.path(),
    );
    let check = check_in_dir(&g, "policies/agent.toml");
    for out in [&run, &check] {
        assert_eq!(out.status.code(), Some(2), "{}", describe(out));
        assert!(stderr(out).contains(&cycle), "{cycle}\n{}", stderr(out));
        assert!(stderr(out).contains(&gone), "{gone}\n{}", stderr(out));
    }
}

#[test]
fn a_pyenv_shim_is_explained() {
    // A pyenv layout of the test's own: the shim is what PATH finds first.
    let g = Guardd::start();
    let shims = g.dir.path().join("home/.pyenv/shims");
    std::fs::create_dir_all(&shims).unwrap();
    let shim = shims.join("python3");
    std::fs::write(
        &shim,
        "#!/usr/bin/env bash\nexec pyenv exec python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = g
        .run_cmd(
            &repo().join("policies/demo.toml"),
            &[],
            &["python3", "-c", "pass"],
        )
        .env("PATH", format!("{}:/usr/bin:/bin", shims.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot run python3: the policy does not grant exec on {}; add it to [filesystem] exec. {} is a pyenv shim: it runs pyenv, which runs the real interpreter under ~/.pyenv/versions; run that interpreter directly",
            shim.display(),
            shim.display()
        )),
        "{err}"
    );
}
