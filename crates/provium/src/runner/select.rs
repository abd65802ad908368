//! Which tests run: `--include-slow`, `--tag`, `--no-tag`, `--tag-meta`,
//! `--no-tag-meta` against a test's `meta`, with the reference's order and
//! skip reasons (`meta.skip` and `todo` come first, decided by the Lua
//! layer). The selection also travels as `PROVIUM_TEST_FILTER`, a JSON
//! object the binary sets for whatever it starts (fixture builders, build
//! commands), in the reference's shape.
//!
//! Per test, in order: `meta.slow` without `--include-slow`; a `--no-tag`
//! match; no `--tag` match (when any is given); a `--no-tag-meta` match;
//! for each key of `--tag-meta`, no match of any of its values (values of
//! one key are OR-ed, keys AND-ed). `meta.tags` and the `meta[KEY]` that the
//! `-meta` flags look at match when they are a string or contain one.

use serde::{Deserialize, Serialize};

use crate::events::{MetaMap, MetaValue};

/// The environment variable the selection is handed over in.
pub const ENV: &str = "PROVIUM_TEST_FILTER";

/// A `KEY=VALUE` of `--tag-meta` / `--no-tag-meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaTag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not KEY=VALUE (a non-empty key, then `=`, then the value)")]
pub struct MetaTagError(String);

impl std::str::FromStr for MetaTag {
    type Err = MetaTagError;

    fn from_str(s: &str) -> Result<MetaTag, MetaTagError> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(MetaTag { key: k.to_string(), value: v.to_string() }),
            _ => Err(MetaTagError(s.to_string())),
        }
    }
}

/// What the command line asked to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub include_slow: bool,
    pub tag: Vec<String>,
    pub no_tag: Vec<String>,
    pub tag_meta: Vec<MetaTag>,
    pub no_tag_meta: Vec<MetaTag>,
}

fn truthy(v: Option<&MetaValue>) -> bool {
    matches!(v, Some(MetaValue::Bool(true))) || matches!(v, Some(MetaValue::Int(n)) if *n != 0)
}

fn strings<'a>(meta: &'a MetaMap, key: &str) -> Vec<&'a str> {
    meta.get(key).map(MetaValue::strings).unwrap_or_default()
}

impl Selection {
    /// The `PROVIUM_TEST_FILTER` value.
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("a selection serialises")
    }

    /// A selection read back from `PROVIUM_TEST_FILTER`.
    pub fn from_env(text: &str) -> Result<Selection, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Why a test with `meta` does not run, or `None` when it runs.
    pub fn skip_reason(&self, meta: &MetaMap) -> Option<String> {
        if truthy(meta.get("slow")) && !self.include_slow {
            return Some("filtered: slow tests skipped (pass --include-slow)".into());
        }
        let tags = strings(meta, "tags");
        let hit: Vec<&str> = self.no_tag.iter().map(String::as_str).filter(|t| tags.contains(t)).collect();
        if !hit.is_empty() {
            return Some(format!("filtered: matched --no-tag ({hit:?})"));
        }
        if !self.tag.is_empty() && !self.tag.iter().any(|t| tags.contains(&t.as_str())) {
            return Some(format!("filtered: did not match --tag ({:?})", self.tag));
        }
        if let Some(m) = self.no_tag_meta.iter().find(|m| strings(meta, &m.key).contains(&m.value.as_str())) {
            return Some(format!("filtered: matched --no-tag-meta ({}={})", m.key, m.value));
        }
        // Each key once, in the order first given (`dedup` alone would keep
        // `a, b, a` as is and check `a` twice).
        let mut keys: Vec<&str> = Vec::new();
        for m in &self.tag_meta {
            if !keys.contains(&m.key.as_str()) {
                keys.push(&m.key);
            }
        }
        for key in keys {
            let wanted: Vec<&str> = self.tag_meta.iter().filter(|m| m.key == key).map(|m| m.value.as_str()).collect();
            let have = strings(meta, key);
            if !wanted.iter().any(|w| have.contains(w)) {
                return Some(format!("filtered: did not match any --tag-meta {key}={}", wanted.join("|")));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, MetaValue)]) -> MetaMap {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
    fn s(v: &str) -> MetaValue {
        MetaValue::Str(v.into())
    }
    fn arr(v: &[&str]) -> MetaValue {
        MetaValue::Array(v.iter().map(|x| s(x)).collect())
    }
    fn tm(kv: &str) -> MetaTag {
        kv.parse().unwrap()
    }

    #[test]
    fn slow_tests_need_include_slow() {
        let slow = meta(&[("slow", MetaValue::Bool(true))]);
        let reason = Selection::default().skip_reason(&slow).unwrap();
        assert_eq!(reason, "filtered: slow tests skipped (pass --include-slow)");
        assert_eq!(Selection { include_slow: true, ..Default::default() }.skip_reason(&slow), None);
        assert!(Selection::default().skip_reason(&meta(&[("slow", MetaValue::Int(1))])).is_some());
        assert_eq!(Selection::default().skip_reason(&meta(&[("slow", MetaValue::Int(0))])), None);
        assert_eq!(Selection::default().skip_reason(&meta(&[("slow", s("yes"))])), None, "only true or non-zero");
    }

    #[test]
    fn tags_or_together_and_no_tag_wins() {
        let net = meta(&[("tags", arr(&["net", "fast"]))]);
        let one = meta(&[("tags", s("disk"))]);
        let none = MetaMap::new();
        let sel = Selection { tag: vec!["net".into(), "disk".into()], ..Default::default() };
        assert_eq!(sel.skip_reason(&net), None);
        assert_eq!(sel.skip_reason(&one), None, "a string tag is one tag");
        assert_eq!(sel.skip_reason(&none).unwrap(), r#"filtered: did not match --tag (["net", "disk"])"#);
        let both = Selection { no_tag: vec!["fast".into()], ..sel };
        assert_eq!(both.skip_reason(&net).unwrap(), r#"filtered: matched --no-tag (["fast"])"#);
        assert_eq!(both.skip_reason(&one), None);
    }

    #[test]
    fn tag_meta_ors_one_key_ands_keys_and_no_tag_meta_wins() {
        let t = meta(&[("area", s("boot")), ("subsystems", arr(&["net", "fs"]))]);
        let sel = |tag: &[&str], no: &[&str]| Selection {
            tag_meta: tag.iter().map(|x| tm(x)).collect(),
            no_tag_meta: no.iter().map(|x| tm(x)).collect(),
            ..Default::default()
        };
        assert_eq!(sel(&["area=boot"], &[]).skip_reason(&t), None);
        assert_eq!(sel(&["area=net", "area=boot"], &[]).skip_reason(&t), None, "one key: OR");
        assert_eq!(sel(&["area=boot", "subsystems=fs"], &[]).skip_reason(&t), None);
        assert_eq!(
            sel(&["area=boot", "subsystems=mm"], &[]).skip_reason(&t).unwrap(),
            "filtered: did not match any --tag-meta subsystems=mm",
            "keys: AND"
        );
        assert_eq!(
            sel(&["area=x", "area=y"], &[]).skip_reason(&t).unwrap(),
            "filtered: did not match any --tag-meta area=x|y"
        );
        assert_eq!(
            sel(&["area=boot"], &["subsystems=net"]).skip_reason(&t).unwrap(),
            "filtered: matched --no-tag-meta (subsystems=net)"
        );
    }

    #[test]
    fn the_order_is_slow_then_no_tag_then_tag_then_meta() {
        let t = meta(&[("slow", MetaValue::Bool(true)), ("tags", s("x")), ("area", s("a"))]);
        let sel = Selection { no_tag: vec!["x".into()], no_tag_meta: vec![tm("area=a")], ..Default::default() };
        assert!(sel.skip_reason(&t).unwrap().contains("slow"));
        let sel = Selection { include_slow: true, ..sel };
        assert!(sel.skip_reason(&t).unwrap().contains("--no-tag ("));
    }

    #[test]
    fn meta_tags_parse_on_the_first_equals_and_the_env_form_round_trips() {
        assert_eq!(tm("k=v=w"), MetaTag { key: "k".into(), value: "v=w".into() });
        assert_eq!(tm("k="), MetaTag { key: "k".into(), value: "".into() });
        assert!("=v".parse::<MetaTag>().is_err() && "kv".parse::<MetaTag>().is_err());
        let sel = Selection {
            include_slow: true,
            tag: vec!["a".into()],
            no_tag: vec![],
            tag_meta: vec![tm("area=boot")],
            no_tag_meta: vec![],
        };
        let env = sel.to_env();
        assert_eq!(
            env,
            r#"{"include_slow":true,"tag":["a"],"no_tag":[],"tag_meta":[{"key":"area","value":"boot"}],"no_tag_meta":[]}"#
        );
        assert_eq!(Selection::from_env(&env).unwrap(), sel);
    }
}
