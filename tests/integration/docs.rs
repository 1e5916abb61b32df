//! The docs say what the code does: every command of the README's walkthrough runs, in order, on a fresh
//! folder and answers what the README shows; the example config checks after the commands it gives; and
//! docs/config.md documents every key the config file accepts, and no other.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::process::Serving;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Leaves out the caller's tessera, OpenTelemetry and log settings, as on a fresh shell.
fn clean_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("TESSERA") || name.starts_with("OTEL_") || name == "RUST_LOG" {
            command.env_remove(&*name);
        }
    }
    command
}

/// A folder holding only `tessera`, a link to the binary under test, to put first on PATH.
fn tessera_on_path() -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(TESSERA, bin.path().join("tessera")).unwrap();
    bin
}

/// Runs `script` with `bash -c` in `dir` (with `pipefail`, so a failing command before a pipe is not hidden),
/// `tessera` on PATH being the binary under test. Fails the test past a minute.
fn bash(dir: &Path, bin: &Path, env: &[(&str, &str)], script: &str) -> (ExitStatus, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = clean_env(&mut Command::new("bash"))
        .arg("-c")
        .arg(format!("set -o pipefail\n{script}"))
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{script}` did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What the user sees in the terminal: the output, then the errors (no command here writes both).
    (status, stdout.join().unwrap() + &stderr.join().unwrap())
}

// ---------------------------------------------------------------------------------------------------------
// The README's walkthrough.

/// One `$ ` command of the walkthrough and the lines the README shows under it.
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

/// The `$ ` commands of the code blocks of the README's "A walkthrough" section, in order. A command whose
/// line ends with `\` goes on over the next line, kept as written: bash joins the lines as a shell would.
fn walkthrough(readme: &str) -> Vec<Step> {
    let start = readme.find("\n## A walkthrough").expect("the README has a section `## A walkthrough`") + 1;
    let section = &readme[start..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |end| end + 1)];
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = section.lines();
    while let Some(fence) = lines.next() {
        if !fence.starts_with("```") {
            continue;
        }
        let (mut in_block, mut continued) = (false, false);
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            if continued {
                let step = steps.last_mut().unwrap();
                step.command.push('\n');
                step.command.push_str(line);
                continued = line.ends_with('\\');
            } else if let Some(command) = line.strip_prefix("$ ") {
                steps.push(Step { command: command.to_string(), shown: Vec::new() });
                (in_block, continued) = (true, command.ends_with('\\'));
            } else {
                assert!(in_block, "a walkthrough block shows {line:?} before any `$ ` command");
                steps.last_mut().unwrap().shown.push(line.to_string());
            }
        }
    }
    steps
}

/// Starts `tessera serve` (dev mode) in `dir`, with a clean environment, on free ports it reports.
fn start_dev_server(dir: &Path) -> Serving {
    Serving::start(&[], |c| {
        clean_env(c).current_dir(dir);
    })
}

/// JSON values whose content changes at every run (fresh keys and their public parts, token ids, clocks):
/// compared by type only.
const PER_RUN: [&str; 9] = ["access_token", "kid", "jti", "exp", "iat", "nbf", "expires_at", "x", "suspended_until"];

fn json_values(text: &str) -> Option<Vec<Value>> {
    if text.trim().is_empty() {
        return None;
    }
    serde_json::Deserializer::from_str(text).into_iter::<Value>().collect::<Result<_, _>>().ok()
}

fn compare_json(shown: &Value, seen: &Value, key: &str, problems: &mut Vec<String>) {
    match (shown, seen) {
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb): (BTreeSet<_>, BTreeSet<_>) = (a.keys().collect(), b.keys().collect());
            if ka != kb {
                problems.push(format!("{key}: the README shows the keys {ka:?}, the command printed {kb:?}"));
            }
            for (k, v) in a {
                if let Some(w) = b.get(k) {
                    compare_json(v, w, k, problems);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).for_each(|(v, w)| compare_json(v, w, key, problems));
        }
        _ => {
            let per_run = PER_RUN.contains(&key) || shown.as_str().is_some_and(|s| s.ends_with('…'));
            let same =
                if per_run { std::mem::discriminant(shown) == std::mem::discriminant(seen) } else { shown == seen };
            if !same {
                problems.push(format!("{key}: the README shows {shown}, the command printed {seen}"));
            }
        }
    }
}

/// Whether `seen` is what the README shows: the same lines, where a line (or a JSON string) the README
/// cuts short with `…` only has to start the same, and JSON values that change at every run only have to
/// be of the same type.
fn compare_output(shown: &str, seen: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if shown.lines().count() != seen.lines().count() {
        problems.push(format!(
            "the README shows {} lines, the command printed {}",
            shown.lines().count(),
            seen.lines().count()
        ));
    }
    if let Some(shown_values) = json_values(shown) {
        match json_values(seen) {
            Some(seen_values) if seen_values.len() == shown_values.len() => {
                for (a, b) in shown_values.iter().zip(&seen_values) {
                    compare_json(a, b, "(top)", &mut problems);
                }
            }
            _ => problems.push("the README shows JSON, the command printed something else".into()),
        }
    } else {
        for (a, b) in shown.lines().zip(seen.lines()) {
            let same = match a.split_once('…') {
                Some((prefix, _)) => b.starts_with(prefix),
                None => a == b,
            };
            if !same {
                problems.push(format!("the README shows {a:?}, the command printed {b:?}"));
            }
        }
    }
    problems
}

/// The README shows an OAuth error document: the command fails on purpose.
fn shows_an_error(shown: &str) -> bool {
    json_values(shown).is_some_and(|values| values.iter().any(|v| v.get("error").is_some()))
}

#[test]
fn the_readme_walkthrough_runs_as_shown_on_a_fresh_folder() {
    let steps = walkthrough(&read("README.md"));
    let folder = tempfile::tempdir().unwrap();
    let bin = tessera_on_path();
    let mut server: Option<Serving> = None;
    let mut ran = 0;
    for step in &steps {
        let command = step.command.as_str();
        match command {
            // "Start the broker in one terminal": in the background here, in the same folder.
            "cargo run -- serve" => {
                assert!(server.is_none(), "the walkthrough starts a second server");
                let dev = start_dev_server(folder.path());
                let (grpc, http) = (dev.grpc.clone(), dev.http.clone());
                // The log lines the README shows (after their timestamp, up to any `…`) are logged.
                let logs = dev.logs();
                for line in &step.shown {
                    let line = line.split_once(char::is_whitespace).map_or("", |(_, rest)| rest).trim_start();
                    let line = line.split('…').next().unwrap();
                    let line = line.replace("127.0.0.1:50051", &grpc).replace("127.0.0.1:8080", &http);
                    assert!(logs.contains(&line), "tessera serve does not log {line:?}:\n{logs}");
                }
                server = Some(dev);
            }
            // `tessera` is the binary under test, first on PATH, instead of `cargo run` in a clone.
            "alias tessera='cargo run -q --'" => assert!(step.shown.is_empty()),
            _ => {
                assert!(
                    !command.contains("cargo") && !command.starts_with("alias"),
                    "the walkthrough has a command this test does not know how to run: {command:?}"
                );
                let Some(dev) = &server else {
                    panic!("{command:?} comes before the walkthrough starts the server");
                };
                // The README's default addresses are those the test's server got.
                let (grpc, http) = (&dev.grpc, &dev.http);
                let script = command
                    .replace("localhost:8080", http)
                    .replace("127.0.0.1:8080", http)
                    .replace("localhost:50051", grpc)
                    .replace("127.0.0.1:50051", grpc);
                let addr = dev.url();
                let (status, seen) = bash(folder.path(), bin.path(), &[("TESSERA_ADDR", &addr)], &script);
                let shown = step.shown.join("\n");
                let fails = shows_an_error(&shown);
                assert_eq!(
                    status.success(),
                    !fails,
                    "{command}\n{}: {status}\n{seen}\nserver logs:\n{}",
                    if fails { "should fail as the README shows" } else { "fails" },
                    dev.logs()
                );
                let problems = compare_output(&shown, &seen);
                assert!(
                    problems.is_empty(),
                    "{command}\nprints\n{seen}\nnot what the README shows:\n{shown}\n{problems:#?}"
                );
                ran += 1;
            }
        }
    }
    assert!(server.is_some() && ran > 0, "the walkthrough has no server or no command: {steps:#?}");
}

// ---------------------------------------------------------------------------------------------------------
// The example config.

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name), &[]);
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn the_example_config_checks_after_the_commands_it_gives() {
    let example = read("examples/tessera.toml");
    // The commands are the indented lines of the file's opening comment.
    let commands: Vec<&str> = example
        .lines()
        .take_while(|line| line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("#   "))
        .map(str::trim)
        .collect();
    assert!(
        commands.last().is_some_and(|c| *c == "tessera config check examples/tessera.toml"),
        "the example's opening comment should end its commands with its config check: {commands:?}"
    );
    // A fresh clone: examples/ without the keys a developer may have generated (git-ignored).
    let clone = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(ROOT).join("examples"), &clone.path().join("examples"), &["keys"]);
    let bin = tessera_on_path();
    for command in &commands {
        let (status, seen) = bash(clone.path(), bin.path(), &[], command);
        assert!(status.success(), "{command}: {status}\n{seen}");
        if command.starts_with("tessera config check") {
            assert!(seen.starts_with("examples/tessera.toml: ok ("), "{command}: {seen}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// docs/config.md and the config builder.

/// The structs of `source` marked `#[serde(deny_unknown_fields)]`, each with its fields (serde name, type).
fn strict_structs(source: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let lines: Vec<&str> = source.lines().collect();
    let mut structs = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("pub struct ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let attributes: String = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("#[") || l.trim_start().starts_with("///"))
            .copied()
            .collect();
        if !attributes.contains("deny_unknown_fields") {
            continue;
        }
        assert!(rest.trim_end().ends_with('{'), "{name}: the test reads structs with named fields only");
        let mut fields = Vec::new();
        let mut rename = None;
        let mut skip = false;
        for line in &lines[i + 1..] {
            let line = line.trim();
            if line == "}" {
                break;
            }
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            if line.starts_with("#[") {
                assert!(!line.contains("flatten"), "{name}: the test does not read #[serde(flatten)]: {line}");
                skip |= ["serde(skip)", "serde(skip,", "skip_deserializing"].iter().any(|s| line.contains(s));
                if let Some((_, renamed)) = line.split_once("rename = \"") {
                    rename = renamed.split('"').next().map(str::to_string);
                }
                continue;
            }
            let field = line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
            let (field, ty) = field.split_once(':').unwrap_or_else(|| panic!("{name}: cannot read the field {line:?}"));
            let ty =
                ty.trim().strip_suffix(',').unwrap_or_else(|| panic!("{name}: a field on several lines: {line:?}"));
            let field = rename.take().unwrap_or_else(|| field.trim().to_string());
            if !std::mem::take(&mut skip) {
                fields.push((field, ty.trim().to_string()));
            }
        }
        structs.insert(name, fields);
    }
    structs
}

/// `Vec<T>` → (`T`, true); `Option<T>` → (`T`, false); `T` → (`T`, false).
fn element_type(ty: &str) -> (&str, bool) {
    if let Some(inner) = ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
        return (element_type(inner).0, true);
    }
    match ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => element_type(inner),
        None => (ty, false),
    }
}

/// Every key the config file accepts, as `section.key` (`issuers[].key` for arrays of tables), read from the
/// builder structs of src/config/ (one file a section): the sections are the fields of `ConfigBuilder`, their keys the fields
/// of each section's struct, and a field whose type is itself a strict struct a nested table
/// (`section.table.key`).
fn accepted_keys(source: &str) -> BTreeMap<String, BTreeSet<String>> {
    let structs = strict_structs(source);
    let root = structs.get("ConfigBuilder").expect("src/config/ has a strict ConfigBuilder");
    fn keys(structs: &BTreeMap<String, Vec<(String, String)>>, name: &str, prefix: &str, out: &mut BTreeSet<String>) {
        for (field, ty) in &structs[name] {
            let (element, _) = element_type(ty);
            if structs.contains_key(element) {
                keys(structs, element, &format!("{prefix}{field}."), out);
            } else {
                out.insert(format!("{prefix}{field}"));
            }
        }
    }
    let mut sections = BTreeMap::new();
    for (field, ty) in root {
        let (element, array) = element_type(ty);
        assert!(structs.contains_key(element), "ConfigBuilder.{field}: {ty} is not a strict builder struct");
        let mut out = BTreeSet::new();
        keys(&structs, element, "", &mut out);
        sections.insert(if array { format!("{field}[]") } else { field.clone() }, out);
    }
    sections
}

/// The keys docs/config.md's reference documents: under a `### `[section]`` or `### `[[section]]``
/// heading, the backquoted names of its `#### ` headings.
fn documented_keys() -> BTreeMap<String, BTreeSet<String>> {
    let doc = read("docs/config.md");
    let quoted = |line: &str| line.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>();
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            current = quoted(heading).into_iter().next().and_then(|q| {
                if let Some(name) = q.strip_prefix("[[").and_then(|q| q.strip_suffix("]]")) {
                    Some(format!("{name}[]"))
                } else {
                    q.strip_prefix('[').and_then(|q| q.strip_suffix(']')).map(str::to_string)
                }
            });
            if let Some(section) = &current {
                sections.entry(section.clone()).or_default();
            }
        } else if line.starts_with("## ") {
            current = None;
        } else if let (Some(heading), Some(section)) = (line.strip_prefix("#### "), &current) {
            sections.get_mut(section).unwrap().extend(quoted(heading));
        }
    }
    sections
}

/// Every source file of the config module, one after the other.
fn config_sources() -> String {
    let dir = Path::new(ROOT).join("src/config");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn docs_config_md_documents_every_config_key_and_no_other() {
    let accepted = accepted_keys(&config_sources());
    assert!(accepted.len() >= 10 && accepted.values().all(|k| !k.is_empty()), "{accepted:#?}");
    let documented = documented_keys();
    let mut undocumented = Vec::new();
    for (section, keys) in &accepted {
        for key in keys {
            if !documented.get(section).is_some_and(|d| d.contains(key)) {
                undocumented.push(format!("{section}.{key}"));
            }
        }
    }
    let mut unknown = Vec::new();
    for (section, keys) in &documented {
        for key in keys {
            if !accepted.get(section).is_some_and(|a| a.contains(key)) {
                unknown.push(format!("{section}.{key}"));
            }
        }
        if !accepted.contains_key(section) {
            unknown.push(format!("[{section}]"));
        }
    }
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/config.md (a `#### `key`` heading under the section's `### ` heading) does not document the keys \
         {undocumented:?}, and documents keys the config does not accept: {unknown:?}"
    );
}

#[test]
fn the_config_key_reader_sees_new_fields_and_nested_tables() {
    // The reader above, on a builder like src/config/'s with a field added: it needs no list of keys.
    let source = "
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigBuilder {
    pub broker: BrokerBuilder,
    pub issuers: Vec<IssuerBuilder>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerBuilder {
    /// A doc comment.
    pub issuer: Option<String>,
    pub task_revocation_retention: Option<u64>,
    #[serde(rename = \"limits\")]
    pub limit_table: Option<LimitsBuilder>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBuilder {
    pub depth: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerBuilder {
    pub name: String,
    #[serde(skip)]
    pub internal: bool,
    pub max_assertion_lifetime: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NotAConfigStruct {
    pub anything: u8,
}
";
    let structs = strict_structs(source);
    assert_eq!(
        structs.keys().collect::<Vec<_>>(),
        ["BrokerBuilder", "ConfigBuilder", "IssuerBuilder", "LimitsBuilder"]
    );
    let fields = |name: &str| structs[name].iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>();
    assert_eq!(fields("BrokerBuilder"), ["issuer", "task_revocation_retention", "limits"]);
    assert_eq!(fields("IssuerBuilder"), ["name", "max_assertion_lifetime"]);
    let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        accepted_keys(source),
        BTreeMap::from([
            ("broker".to_string(), keys(&["issuer", "task_revocation_retention", "limits.depth"])),
            ("issuers[]".to_string(), keys(&["name", "max_assertion_lifetime"])),
        ])
    );
}
