//! The `json` global: `json.encode(v)` and `json.decode(s)`, host-side
//! (serde_json), as the reference's section 5.15 describes.
//!
//! Encoding: a table whose keys are all positive integers is an array as
//! long as its largest key, holes as `null` (so `{}` is `[]`); any other
//! table is an object, integer keys as strings. Functions, userdata and
//! cycles raise. Decoding: integers exact within i64, larger ones as their
//! u64 bit pattern; `null` becomes nil (an object drops the key, an array
//! keeps the hole).

use std::collections::HashSet;

use mlua::{Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};

use super::errors::raise;

/// How deep tables may nest before encoding gives up.
const MAX_DEPTH: usize = 128;

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let json = lua.create_table()?;
    json.set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let j = to_json(&v, &mut HashSet::new(), 0).map_err(|m| raise(lua, format!("json.encode: {m}")))?;
            Ok(j.to_string())
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, s: mlua::String| {
            let j: Json = serde_json::from_slice(&s.as_bytes()).map_err(|e| {
                raise(lua, format!("json.decode: {} at line {}, column {}", strip_position(&e), e.line(), e.column()))
            })?;
            from_json(lua, &j)
        })?,
    )?;
    lua.globals().set("json", json)
}

/// serde_json's message without its own " at line N column M" suffix.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split(" at line ").next().unwrap_or(&s).to_string()
}

fn to_json(v: &Value, seen: &mut HashSet<usize>, depth: usize) -> Result<Json, String> {
    Ok(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(n) => Json::Number((*n).into()),
        Value::Number(f) => {
            Json::Number(Number::from_f64(*f).ok_or_else(|| format!("cannot encode the number {f} (not finite)"))?)
        }
        Value::String(s) => {
            Json::String(s.to_str().map_err(|_| "cannot encode a string that is not UTF-8")?.to_string())
        }
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!("tables nest deeper than {MAX_DEPTH}"));
            }
            let id = t.to_pointer() as usize;
            if !seen.insert(id) {
                return Err("cannot encode a table that contains itself (a cycle)".into());
            }
            let out = table_to_json(t, seen, depth)?;
            seen.remove(&id);
            out
        }
        other => return Err(format!("cannot encode a {}", other.type_name())),
    })
}

fn table_to_json(t: &Table, seen: &mut HashSet<usize>, depth: usize) -> Result<Json, String> {
    let pairs: Vec<(Value, Value)> =
        t.clone().pairs::<Value, Value>().collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let max_index = pairs.iter().try_fold(0i64, |max, (k, _)| match k {
        Value::Integer(n) if *n > 0 => Some(max.max(*n)),
        _ => None,
    });
    if let Some(len) = max_index {
        let mut items = vec![Json::Null; len as usize];
        for (k, v) in &pairs {
            if let Value::Integer(n) = k {
                items[*n as usize - 1] = to_json(v, seen, depth + 1)?;
            }
        }
        return Ok(Json::Array(items));
    }
    let mut map = Map::new();
    for (k, v) in &pairs {
        let key = match k {
            Value::String(s) => s.to_str().map_err(|_| "cannot encode a key that is not UTF-8")?.to_string(),
            Value::Integer(n) => n.to_string(),
            other => return Err(format!("cannot encode a {} key", other.type_name())),
        };
        map.insert(key, to_json(v, seen, depth + 1)?);
    }
    Ok(Json::Object(map))
}

fn from_json(lua: &Lua, j: &Json) -> mlua::Result<Value> {
    Ok(match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Integer(i),
            (None, Some(u), _) => Value::Integer(u as i64),
            (_, _, f) => Value::Number(f.unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            Value::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table()?;
            for (k, v) in map {
                t.raw_set(k.as_str(), from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        install(&lua).unwrap();
        lua
    }

    fn eval<T: mlua::FromLua>(lua: &Lua, code: &str) -> T {
        lua.load(code).eval().unwrap_or_else(|e| panic!("{code}: {e}"))
    }

    #[test]
    fn encoding_follows_the_reference() {
        let lua = lua();
        assert_eq!(eval::<String>(&lua, "return json.encode({1, 2, 3})"), "[1,2,3]");
        assert_eq!(eval::<String>(&lua, "return json.encode({[1] = 'a', [3] = 'c'})"), r#"["a",null,"c"]"#);
        assert_eq!(eval::<String>(&lua, "return json.encode({a = 1, [2] = true})"), r#"{"2":true,"a":1}"#);
        assert_eq!(eval::<String>(&lua, "return json.encode({})"), "[]");
        assert_eq!(eval::<String>(&lua, "return json.encode('x\\n')"), r#""x\n""#);
        assert_eq!(eval::<String>(&lua, "return json.encode(1.5)"), "1.5");
        assert_eq!(eval::<String>(&lua, "return json.encode(nil)"), "null");
        for bad in
            ["local t = {}; t.me = t; return json.encode(t)", "return json.encode(print)", "return json.encode(0/0)"]
        {
            let e = lua.load(bad).eval::<String>().unwrap_err().to_string();
            assert!(e.contains("json.encode: cannot encode"), "{bad}: {e}");
        }
    }

    #[test]
    fn decoding_follows_the_reference() {
        let lua = lua();
        assert_eq!(eval::<i64>(&lua, "return json.decode('9223372036854775807')"), i64::MAX);
        assert_eq!(eval::<i64>(&lua, "return json.decode('18446744073709551615')"), -1);
        assert_eq!(eval::<f64>(&lua, "return json.decode('2.5')"), 2.5);
        assert!(eval::<bool>(&lua, "local t = json.decode('{\"a\": null, \"b\": 1}'); return t.a == nil and t.b == 1"));
        assert!(eval::<bool>(
            &lua,
            "local t = json.decode('[1, null, 3]'); return t[1] == 1 and t[2] == nil and t[3] == 3"
        ));
        let round = "local s = json.encode({name = 'x', list = {1, 2}, nested = {ok = true}}); return json.encode(json.decode(s)) == s";
        assert!(eval::<bool>(&lua, round));
        let e = lua.load("return json.decode('{\"a\": 1,\\n  oops}')").eval::<Value>().unwrap_err().to_string();
        assert!(e.contains("json.decode: key must be a string at line 2, column 3"), "{e}");
    }
}
