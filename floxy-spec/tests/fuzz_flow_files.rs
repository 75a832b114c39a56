//! Fuzzed flow files: arbitrary bytes, mutations of the example flows (YAML, and the same
//! files as JSON), unknown keys, deep nesting and YAML alias bombs. Every input gets a
//! `FlowFile` or typed, located `SpecErrors` (never empty) within the guard's time and
//! memory bounds; what parses converts to definitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_guard;
use floxy_spec::{Format, SpecErrorKind, SpecErrors, parse_str};
use fuzz_guard::{excerpt, guarded};
use proptest::prelude::*;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::LazyLock;

/// The example flows, as YAML text and as JSON text (same content).
static SEEDS: LazyLock<Vec<(Format, String)>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flows");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut seeds = Vec::new();
    for p in paths {
        let yaml = std::fs::read_to_string(&p).unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        seeds.push((Format::Json, serde_json::to_string_pretty(&value).unwrap()));
        seeds.push((Format::Yaml, yaml));
    }
    assert!(
        seeds.len() >= 20,
        "expected the example flows in {}",
        dir.display()
    );
    seeds
});

/// Whether one text parsed.
#[derive(Debug)]
enum Outcome {
    Parsed,
    Rejected(SpecErrors),
}

fn exercise(text: &str, format: Format) -> Outcome {
    match parse_str(text, format, "fuzz.flow") {
        Ok(file) => {
            let defs = file
                .definitions()
                .unwrap_or_else(|e| panic!("parsed but does not convert: {e}"));
            assert_eq!(defs.len(), file.flows.len());
            for d in &defs {
                let _ = floxy_spec::graph::render(d, floxy_spec::graph::GraphFormat::Mermaid);
            }
            Outcome::Parsed
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "rejected without a reason");
            // YAML breaks lines at `\n`, `\r\n` and a lone `\r`.
            let breaks = text.matches('\n').count() + text.matches('\r').count();
            let lines = u32::try_from(breaks + 1).unwrap_or(u32::MAX);
            for e in &errs.0 {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                assert!(e.line <= lines, "error line {} past the end: {e}", e.line);
                let _ = e.to_string();
            }
            Outcome::Rejected(errs)
        }
    }
}

fn run(text: String, format: Format) -> Outcome {
    let what = format!("parse_str({format:?}, {})", excerpt(&text));
    guarded(&what, move || exercise(&text, format))
}

/// One text-level mutation.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, text: String },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    DuplicateLine { at: usize, times: usize },
    SwapLines { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        ":",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "'",
        "&a ",
        "*a",
        "<<: *a",
        "!!str ",
        "!tag ",
        "? ",
        "---\n",
        "...\n",
        "\n",
        "\t",
        "  ",
        "#",
        "|",
        ">",
        "\\u0000",
        "\u{feff}",
        "~",
        "null",
        "unknown_key: 1\n",
        "type: fork\n",
        "branches: [[a]]\n",
        "9999999999999999999999",
        "-1",
        "1e999",
        "yes",
        "\u{0}",
        ",",
        "é",
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            any::<usize>(),
            prop_oneof![interesting.prop_map(str::to_owned), ".{0,6}"]
        )
            .prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..8).prop_map(|(at, times)| Mutation::DuplicateLine { at, times }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

fn mutate(seed: &str, muts: &[Mutation]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Insert { at, text } => {
                let p = at % (n + 1);
                b.splice(p..p, text.bytes());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let p = at % n;
                b.drain(p..(p + len).min(n));
            }
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::DuplicateLine { at, times } => {
                let text = String::from_utf8_lossy(&b).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let i = at % lines.len();
                let line = lines[i];
                for _ in 0..*times {
                    lines.insert(i, line);
                }
                b = lines.join("\n").into_bytes();
            }
            Mutation::SwapLines { a, b: c } => {
                let text = String::from_utf8_lossy(&b).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let len = lines.len();
                lines.swap(a % len, c % len);
                b = lines.join("\n").into_bytes();
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Yaml), Just(Format::Json)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(2_000), ..ProptestConfig::default() })]

    /// Arbitrary bytes (lossily as text) and arbitrary strings, as YAML and as JSON.
    #[test]
    fn arbitrary_text_gets_a_file_or_located_errors(
        text in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            any::<String>(),
            r#"[a-z:\-\[\]{}&*<>|!?#"', \n]{0,120}"#,
        ],
        format in format(),
    ) {
        run(text, format);
    }

    /// The example flows with one to four mutations, parsed in their own format and,
    /// for one case in four, in the other one.
    #[test]
    fn mutated_example_flows_get_a_file_or_located_errors(
        seed in 0usize..1_000,
        muts in prop::collection::vec(mutation(), 0..5),
        swap_format in prop::bool::weighted(0.25),
    ) {
        let (format, text) = &SEEDS[seed % SEEDS.len()];
        let format = match (*format, swap_format) {
            (f, false) => f,
            (Format::Json, true) => Format::Yaml,
            (_, true) => Format::Json,
        };
        let unmutated = muts.is_empty() && !swap_format;
        let out = run(mutate(text, &muts), format);
        if unmutated {
            prop_assert!(matches!(out, Outcome::Parsed), "an example flow fails: {out:?}");
        }
    }

    /// Valid files with an unknown key added at a random mapping: always rejected, at
    /// that key.
    #[test]
    fn unknown_keys_are_rejected_at_the_key(seed in 0usize..1_000, at in any::<usize>()) {
        let (format, text) = &SEEDS[seed % SEEDS.len()];
        let mut v: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        let mut maps = Vec::new();
        collect_maps(&v, &mut Vec::new(), &mut maps);
        let path = &maps[at % maps.len()];
        insert_at(&mut v, path, "zz_unknown_key");
        let text = match format {
            Format::Json => serde_json::to_string_pretty(&v).unwrap(),
            _ => serde_json::to_string(&v).unwrap(), // JSON is YAML too
        };
        match run(text, *format) {
            Outcome::Rejected(e) => prop_assert!(
                e.0.iter().any(|e| e.kind == SpecErrorKind::UnknownKey
                    || e.kind == SpecErrorKind::InvalidValue),
                "{e}"
            ),
            Outcome::Parsed => {
                // Metadata maps take any key.
                prop_assert!(path.iter().any(|k| k == "metadata"), "accepted at {path:?}");
            }
        }
    }
}

/// Key paths of every mapping in `v`.
fn collect_maps(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(o) => {
            out.push(path.clone());
            for (k, c) in o {
                path.push(k.clone());
                collect_maps(c, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(i.to_string());
                collect_maps(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn insert_at(v: &mut serde_json::Value, path: &[String], key: &str) {
    let mut node = v;
    for k in path {
        node = match node {
            serde_json::Value::Object(o) => o.get_mut(k).unwrap(),
            serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    node.as_object_mut()
        .unwrap()
        .insert(key.to_owned(), serde_json::json!(1));
}

fn rejected_as(out: &Outcome, kind: SpecErrorKind) -> bool {
    matches!(out, Outcome::Rejected(e) if e.0.iter().any(|e| e.kind == kind))
}

/// "Billion laughs": each level aliases the one before ten times; nine levels expand to
/// 10⁹ nodes. Also the same bomb under a key the format reads (`metadata`) and a
/// quadratic one (a long list of aliases to one big list).
#[test]
fn yaml_alias_bombs_are_rejected_in_bounded_memory() {
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let refs = [prev.as_str(); 10].join(", ");
        let _ = writeln!(bomb, "a{i}: &a{i} [{refs}]");
    }
    let out = run(bomb.clone(), Format::Yaml);
    assert!(rejected_as(&out, SpecErrorKind::Syntax), "{out:?}");

    let mut in_flow = String::from(
        "handlers: [{name: h, exec: x}]\nflows:\n  - name: f\n    steps:\n      - name: h\n        metadata:\n",
    );
    for line in bomb.lines() {
        in_flow.push_str("          ");
        in_flow.push_str(line);
        in_flow.push('\n');
    }
    let out = run(in_flow, Format::Yaml);
    assert!(rejected_as(&out, SpecErrorKind::Syntax), "{out:?}");

    let big = vec!["x"; 10_000].join(", ");
    let mut quadratic = format!("big: &b [{big}]\nrefs:\n");
    for _ in 0..10_000 {
        quadratic.push_str("  - *b\n");
    }
    let out = run(quadratic, Format::Yaml);
    assert!(rejected_as(&out, SpecErrorKind::Syntax), "{out:?}");
}

/// Anchors nested in anchors: each anchor keeps a copy of its node, so a big list under
/// many nested anchors is copied once per anchor (no alias needed).
#[test]
fn nested_anchors_are_rejected_in_bounded_memory() {
    let big = vec!["x"; 200_000].join(",");
    let depth = 200;
    let mut text = String::from("flows: ");
    for i in 0..depth {
        let _ = write!(text, "&a{i} [");
    }
    text.push_str(&big);
    text.push_str(&"]".repeat(depth));
    let out = run(text, Format::Yaml);
    assert!(rejected_as(&out, SpecErrorKind::Syntax), "{out:?}");
}

/// A merge key that merges a big map into a big map (each merged key is looked up among
/// the map's own keys).
#[test]
fn big_merges_are_bounded_in_time() {
    let n = 24_000;
    let mut text = String::from("base: &b {");
    for i in 0..n {
        let _ = write!(text, "m{i}: 1, ");
    }
    text.push_str("}\nflows: {<<: *b, ");
    for i in 0..n {
        let _ = write!(text, "o{i}: 1, ");
    }
    text.push_str("}\n");
    let out = run(text, Format::Yaml);
    assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
}

/// Mappings with fifty thousand keys (all unknown, or all the same), at the top and in
/// a step: each key is checked for duplicates.
#[test]
fn maps_with_many_keys_are_bounded_in_time() {
    let n = 50_000;
    let mut distinct = String::new();
    let mut same = String::new();
    let mut step = String::from(
        "handlers: [{name: h, exec: x}]\nflows:\n  - name: f\n    steps:\n      - name: h\n",
    );
    for i in 0..n {
        let _ = writeln!(distinct, "k{i}: 1");
        let _ = writeln!(same, "flows: 1");
        let _ = writeln!(step, "        k{i}: 1");
    }
    for text in [distinct, same, step] {
        let out = run(text, Format::Yaml);
        assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    }
}

/// Aliases within reason still work (a shared retry block, merged into steps).
#[test]
fn modest_aliases_still_parse() {
    let text = "handlers: [{name: a, exec: x}, {name: b, exec: y}]\n\
                flows:\n  - name: f\n    steps:\n\
                \x20     - &base {name: a, max_retries: 2, retry_delay: 1s}\n\
                \x20     - {<<: *base, name: b}\n";
    let out = run(text.to_owned(), Format::Yaml);
    assert!(matches!(out, Outcome::Parsed), "{out:?}");
}

/// Nesting far past any real file: flow collections, block collections, JSON arrays, and
/// forks nested in forks (which the format reads recursively).
#[test]
fn deep_nesting_is_rejected_or_bounded() {
    for n in [100, 1_000, 100_000] {
        let open = "[".repeat(n);
        let close = "]".repeat(n);
        for format in [Format::Yaml, Format::Json] {
            let out = run(format!("{open}{close}"), format);
            assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
            let out = run(format!("{{\"flows\": {open}{close}}}"), format);
            assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
        }
        let out = run(
            format!("flows: {}", "{a: ".repeat(n) + &"}".repeat(n)),
            Format::Yaml,
        );
        assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
        let mut block = String::from("flows:\n");
        for i in 0..n.min(5_000) {
            block.push_str(&" ".repeat(i + 1));
            block.push_str("- \n");
        }
        let out = run(block, Format::Yaml);
        assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    }
    for depth in [20, 100, 1_000] {
        // A fork whose first branch holds a fork, `depth` deep, in flow style.
        let mut steps = String::from("[{name: h}]");
        for d in 0..depth {
            steps = format!(
                "[{{type: fork, name: f{d}, branches: [{steps}, [{{name: h, handler: h}}]]}}]"
            );
        }
        let text =
            format!("handlers: [{{name: h, exec: x}}]\nflows: [{{name: f, steps: {steps}}}]\n");
        let out = run(text, Format::Yaml);
        assert!(
            matches!(out, Outcome::Rejected(_)),
            "depth {depth}: {out:?}"
        );
    }
}

/// A block-style fork item `depth` deep whose innermost first branch is `innermost` (one
/// step item's text, without the dash).
fn block_forks(depth: usize, ind: &str, innermost: &str) -> String {
    if depth == 0 {
        return format!("{ind}- {innermost}\n");
    }
    let inner = block_forks(depth - 1, &format!("{ind}      "), innermost);
    format!(
        "{ind}- type: fork\n{ind}  name: fb{depth}\n{ind}  branches:\n{ind}    -\n{inner}{ind}    -\n{ind}      - {{name: h}}\n"
    )
}

/// Forks nested as deep as the YAML parser lets them (block nesting, then flow nesting
/// inside the innermost branch): the format reads nested steps recursively, which must stay
/// well within a thread's stack.
#[test]
fn forks_nested_to_the_parser_limit_stay_within_the_stack() {
    let mut flow = String::from("{name: h}");
    for d in 0..62 {
        flow = format!("{{type: fork, name: f{d}, branches: [[{flow}], [{{name: h}}]]}}");
    }
    for block_depth in [10, 61] {
        let text = format!(
            "handlers: [{{name: h, exec: x}}]\nflows:\n  - name: f\n    steps:\n{}",
            block_forks(block_depth, "      ", &flow)
        );
        let out = run(text, Format::Yaml);
        assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    }
}

/// Huge scalars and long lists in places the format reads.
#[test]
fn huge_values_are_rejected_or_bounded() {
    let head = "handlers: [{name: h, exec: x}]\nflows:\n  - name: f\n    steps:\n      - name: h\n";
    for line in [
        format!("        max_retries: {}", "9".repeat(100_000)),
        format!("        retry_delay: {}s", "9".repeat(100_000)),
        format!("        timeout: -{}", "1".repeat(1_000)),
        format!("        priority: 1e{}", "9".repeat(1_000)),
        format!("        name: {}", "n".repeat(1 << 20)),
    ] {
        let out = run(format!("{head}{line}\n"), Format::Yaml);
        assert!(
            matches!(out, Outcome::Rejected(_)),
            "{}: {out:?}",
            &line[..40]
        );
    }
    // A long fraction is a fine duration (2 s).
    let out = run(
        format!("{head}        retry_delay: 1.{}s\n", "9".repeat(100_000)),
        Format::Yaml,
    );
    assert!(matches!(out, Outcome::Parsed), "{out:?}");
    let mut many = String::new();
    for i in 0..20_000 {
        let _ = writeln!(many, "      - {{name: s{i}, handler: h}}");
    }
    let out = run(
        format!("handlers: [{{name: h, exec: x}}]\nflows:\n  - name: f\n    steps:\n{many}"),
        Format::Yaml,
    );
    assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
}
