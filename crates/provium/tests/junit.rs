//! The JUnit report as CI servers read it: a real run's `--junit` file and
//! `provium merge-junit`'s merge of shards, read back by the Python
//! `junitparser` package and validated by `xmllint` (both installed by
//! `scripts/setup`), not by this crate's own reader.

use std::path::Path;

mod common;
use common::{junitparser, totals, Suite};

/// A file with a booted VM and every test outcome (the failure quotes a
/// kernel warning from the console), a file whose chunk fails, and a plain
/// passing file.
fn write_suite(s: &Suite) {
    s.write(
        "a_mixed.test.lua",
        r#"
local vm = provium:vm("v", "default"):boot()
test("passes", function(t)
  t:log("hello <log> & stuff")
  vm:run("true"):assert_ok()
end)
test("fails with a console excerpt", function(t)
  vm:run("echo '<4>provium-junit: a warning from the kernel' > /dev/kmsg")
  t:log("about to fail")
  t:fail("first line of the failure\nsecond line <b> & \"q\" \27[1mbold\27[0m")
end)
test("skipped by meta", {skip = "not on tcg"}, function(t) end)
test("skipped from the body", function(t) t:skip("later") end)
"#,
    );
    s.write(
        "b_chunk.test.lua",
        "local x = 0\nfor i = 1, 2e6 do x = x + i end\nerror(\"setup went wrong\")\ntest(\"never\", function() end)\n",
    );
    s.write("c_pass.test.lua", "test(\"quick\", function(t) t:assert_eq(1, 1) end)\n");
}

fn xmllint(path: &Path) {
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg(path)
        .output()
        .expect("xmllint (libxml2-utils; run scripts/setup)");
    assert!(out.status.success(), "xmllint: {}", String::from_utf8_lossy(&out.stderr));
}

fn suite<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["suites"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

fn case<'a>(suite: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    suite["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{suite:#}"))
}

#[test]
fn a_runs_junit_report_reads_in_junitparser_and_xmllint() {
    let s = Suite::new();
    write_suite(&s);
    let out = s.run(&["--junit", "out/junit.xml", "."]);
    assert_eq!(out.status.code(), Some(2), "the report's directory must exist");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--junit `out/junit.xml`: cannot write there"));

    let out = s.run(&["--junit", "junit.xml", "."]);
    assert_eq!(out.status.code(), Some(1));
    let path = s.path().join("junit.xml");
    eprintln!(
        "junit.xml: {} bytes\n{}",
        std::fs::metadata(&path).unwrap().len(),
        std::fs::read_to_string(&path).unwrap()
    );
    xmllint(&path);
    let r = junitparser(&path);

    // 4 + 1 (the chunk error) + 1 tests; one of each failure and error.
    assert_eq!(totals(&r), [6, 1, 1, 2], "{r:#}");
    assert!(r["totals"]["time"].as_f64().unwrap() > 0.0);
    assert_eq!(r["suites"].as_array().unwrap().len(), 3);
    for s in r["suites"].as_array().unwrap() {
        assert!(s["time"].as_f64().unwrap() > 0.0, "{s:#}");
        assert!(s["timestamp"].as_str().unwrap().len() == 19, "YYYY-MM-DDTHH:MM:SS: {s:#}");
    }

    let mixed = suite(&r, "a_mixed.test.lua");
    assert_eq!(["tests", "failures", "errors", "skipped"].map(|k| mixed[k].as_u64().unwrap()), [4, 1, 0, 2]);
    let passed = case(mixed, "passes");
    assert_eq!(passed["classname"], "a_mixed.test.lua");
    assert!(passed["time"].as_f64().unwrap() > 0.0, "{passed:#}");
    assert_eq!(passed["results"], serde_json::json!([]));
    assert_eq!(passed["system_out"], "hello <log> & stuff\n");

    let failed = case(mixed, "fails with a console excerpt");
    assert!(failed["time"].as_f64().unwrap() > 0.0, "{failed:#}");
    let failure = &failed["results"][0];
    assert_eq!(failure["kind"], "Failure");
    assert_eq!(failure["message"], "a_mixed.test.lua:10: first line of the failure");
    let text = failure["text"].as_str().unwrap();
    assert!(text.contains("second line <b> & \"q\" ␛[1mbold␛[0m"), "escaped, controls replaced: {text}");
    assert!(text.contains("---- vm v (console, last lines) ----"), "{text}");
    assert!(text.contains("provium-junit: a warning from the kernel"), "the console excerpt: {text}");
    assert_eq!(failed["system_out"], "about to fail\n");

    let skip = |name: &str| {
        let c = case(mixed, name);
        assert_eq!(c["results"][0]["kind"], "Skipped", "{c:#}");
        c["results"][0]["message"].as_str().unwrap().to_string()
    };
    assert_eq!(skip("skipped by meta"), "skipped: not on tcg");
    assert_eq!(skip("skipped from the body"), "later");

    let chunk = suite(&r, "b_chunk.test.lua");
    let errored = case(chunk, "(file)");
    assert_eq!(errored["results"][0]["kind"], "Error");
    assert_eq!(errored["results"][0]["message"], "b_chunk.test.lua:3: setup went wrong");
    assert!(errored["time"].as_f64().unwrap() > 0.0, "{errored:#}");
    assert_eq!(suite(&r, "c_pass.test.lua")["tests"], 1);
}

#[test]
fn merged_shard_reports_count_what_an_unsharded_run_counts() {
    let s = Suite::new();
    write_suite(&s);
    assert_eq!(s.run(&["--junit", "all.xml", "."]).status.code(), Some(1));
    for k in [1, 2] {
        let part = format!("count:{k}/2");
        let out = s.run(&["--partition", &part, "--junit", &format!("shard{k}.xml"), "."]);
        assert_eq!(out.status.code(), Some(1), "each shard has a failing file");
    }
    // A shard with no file at all still writes a report (with no suite).
    assert_eq!(s.run(&["--partition", "count:4/4", "--junit", "empty.xml", "."]).status.code(), Some(0));
    assert_eq!(totals(&junitparser(&s.path().join("empty.xml"))), [0, 0, 0, 0]);
    let out = s.run(&["merge-junit", "merged.xml", "shard1.xml", "empty.xml", "shard2.xml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged 3 suite(s) from 3 file(s) into merged.xml"));
    let merged_path = s.path().join("merged.xml");
    xmllint(&merged_path);

    let (all, merged) = (junitparser(&s.path().join("all.xml")), junitparser(&merged_path));
    let shards = [1, 2].map(|k| junitparser(&s.path().join(format!("shard{k}.xml"))));
    assert!(shards.iter().all(|r| totals(r)[0] > 0), "both shards ran something: {shards:#?}");
    assert_eq!(totals(&merged), totals(&all), "{merged:#}\n{all:#}");
    assert_eq!(totals(&merged), [6, 1, 1, 2]);
    // The same suites and cases, with the same outcomes.
    let outline = |r: &serde_json::Value| {
        let mut cases: Vec<String> = r["suites"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["cases"].as_array().unwrap().iter())
            .map(|c| format!("{} / {}: {}", c["classname"], c["name"], c["results"][0]["kind"]))
            .collect();
        cases.sort();
        cases
    };
    assert_eq!(outline(&merged), outline(&all));

    // A bad input: named, exit 2, nothing written.
    s.write("bad.xml", "<testsuites><testsuite>");
    let out = s.run(&["merge-junit", "never.xml", "shard1.xml", "bad.xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "provium: merge-junit: `bad.xml` is not an XML document: element `<testsuite>` is not closed at the end of \
         the document\n"
    );
    assert!(!s.path().join("never.xml").exists());
}
