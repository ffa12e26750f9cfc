//! Chat templates rendered as transformers renders them (`apply_chat_template`): Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls (`{% break %}`, `{% continue %}`), Python's string
//! and dict methods (`.strip()`, `.startswith()`, `.items()`...), and the globals Hugging Face templates
//! call: `raise_exception(msg)`, `strftime_now(format)` and a `tojson` filter that writes what Python's
//! `json.dumps(ensure_ascii=False)` writes (`", "` and `": "` separators; `indent` and `sort_keys`).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// The environment every chat template renders in.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// A rendering error with where it happened and the template's own message (`raise_exception`'s).
pub fn describe(e: &Error) -> String {
    let mut s = match e.detail() {
        Some(d) => d.to_string(),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        let _ = write!(s, " (line {line})");
    }
    s
}

/// Today's local time formatted with a C `strftime` format (Llama 3.1+ templates print the date).
fn strftime_now(format: String) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(
        out,
        "{}",
        chrono::Local::now().format_with_items(items.into_iter())
    )
    .map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {format:?}"),
        )
    })?;
    Ok(out)
}

/// `value | tojson(indent=None, sort_keys=False)` as Python's `json.dumps(..., ensure_ascii=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    // Python's separators: ", " and ": " without indent, "," and ": " with it
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let s = serde_json::to_string(v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            out.push_str(&s);
        }
        ValueKind::String => {
            let s = serde_json::to_string(v.as_str().unwrap_or_default())
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            out.push_str(&s);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let name = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                let s = serde_json::to_string(&name)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
                out.push_str(&s);
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, sort_keys, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {other}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, Error> {
        let env = environment();
        env.render_str(src, Value::from_serialize(&ctx))
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let ctx =
            serde_json::json!({"t": {"name": "f", "n": [1, 2.5, true, null], "s": "é \"q\""}});
        assert_eq!(
            render("{{ t | tojson }}", ctx.clone()).unwrap(),
            r#"{"n": [1, 2.5, true, null], "name": "f", "s": "é \"q\""}"#
        );
        assert_eq!(
            render("{{ t.n | tojson(indent=2) }}", ctx).unwrap(),
            "[\n  1,\n  2.5,\n  true,\n  null\n]"
        );
    }

    #[test]
    fn templates_get_loop_controls_python_methods_and_trimmed_blocks() {
        let src = "{% for m in messages %}\n{% if m.role == 'stop' %}{% break %}{% endif %}\n{{ m.content.strip() }}|{% endfor %}";
        let ctx = serde_json::json!({"messages": [
            {"role": "user", "content": "  a "}, {"role": "user", "content": "b"}, {"role": "stop", "content": "c"}
        ]});
        assert_eq!(render(src, ctx).unwrap(), "a|b|");
        let e = render(
            "{{ raise_exception('roles must alternate') }}",
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(
            describe(&e).contains("roles must alternate"),
            "{}",
            describe(&e)
        );
        let today = render("{{ strftime_now('%Y') }}", serde_json::json!({})).unwrap();
        assert_eq!(today, chrono::Local::now().format("%Y").to_string());
        assert!(render("{{ strftime_now('%Q') }}", serde_json::json!({})).is_err());
    }
}
