//! RFC 9396 Rich Authorization Requests: `authorization_details`, the fine-grained half of what a token grants
//! ("read case 1234", "pay at most 50 EUR") next to its scopes.
//!
//! Everything about details lives here, in one place each:
//! - [`Details::parse`]: the wire form (a JSON array, RFC 9396 §2 / §7), bounded before it is looked at;
//! - [`DetailType`]: a type an audience accepts (`[[audiences.authorization_details]]`), with the schema its
//!   entries must satisfy ([`Schema`], compiled once at load) and how each field narrows ([`Narrowing`]);
//! - [`narrow`]: the invariant — a re-exchange may only keep, drop or narrow its parent's details — enforced
//!   by the exchange and nowhere else, like `Exchange::grant_scopes` for scopes;
//! - [`Requirement`]: what a forward-auth route asks of a token's details.
//!
//! The schema is a deliberately small, strict subset of JSON Schema validated by hand (`type`, `enum`,
//! `const`, `properties`, `required`, `additionalProperties: false`, `items`, `minItems`/`maxItems`,
//! `uniqueItems`, `minimum`/`maximum`, `minLength`/`maxLength`): a detail entry is a small record, this
//! subset covers every field RFC 9396 defines and every example in it, and a keyword outside it is a config
//! error rather than silently ignored (a full JSON Schema engine brings regexes, remote `$ref`s and formats
//! an operator could believe were enforced on a path that must stay cheap and predictable).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorCode, Result};

/// The longest `authorization_details` parameter accepted, in bytes (RFC 9396 §2 has no bound; a token has):
/// base64url in the JWT makes it a third longer, and the whole token must stay under the broker's own-token
/// bound ([`crate::issuer::MAX_OWN_TOKEN_BYTES`], 8 KiB) with the rest of its claims.
pub const MAX_DETAILS_BYTES: usize = 4 * 1024;
/// The most entries one request (and so one token) may carry.
pub const MAX_DETAILS: usize = 16;
/// The deepest nesting of arrays and objects in a detail entry.
const MAX_DEPTH: usize = 8;

/// RFC 9396 §2 common fields that are sets of strings: a narrower entry holds a subset.
pub const SET_FIELDS: [&str; 4] = ["actions", "locations", "datatypes", "privileges"];

/// A token's or a request's `authorization_details`: JSON objects, each with a string `type`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Details(pub Vec<Map<String, Value>>);

fn invalid(why: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidAuthorizationDetails, why)
}

impl Details {
    /// Parses the wire form: a JSON array of objects, each with a non-empty string `type`; at most
    /// [`MAX_DETAILS_BYTES`] bytes, [`MAX_DETAILS`] entries, nested at most 8 deep. Anything else is
    /// `invalid_authorization_details`.
    pub fn parse(text: &str) -> Result<Details> {
        if text.len() > MAX_DETAILS_BYTES {
            return Err(invalid(format!("authorization_details is longer than {MAX_DETAILS_BYTES} bytes")));
        }
        let value: Value = serde_json::from_str(text).map_err(|_| invalid("authorization_details is not JSON"))?;
        let Value::Array(entries) = value else {
            return Err(invalid("authorization_details must be a JSON array"));
        };
        if entries.len() > MAX_DETAILS {
            return Err(invalid(format!("at most {MAX_DETAILS} authorization_details entries")));
        }
        let mut details = Vec::with_capacity(entries.len());
        for entry in entries {
            if depth(&entry) > MAX_DEPTH {
                return Err(invalid("an authorization_details entry is nested too deeply"));
            }
            let Value::Object(entry) = entry else {
                return Err(invalid("each authorization_details entry must be a JSON object"));
            };
            if entry.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(invalid("each authorization_details entry needs a string `type`"));
            }
            details.push(entry);
        }
        Ok(Details(details))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.0.iter()
    }

    /// The JSON array, as RFC 9396 §7 returns it in the token response.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }
}

/// An entry's `type`.
pub fn type_of(entry: &Map<String, Value>) -> &str {
    entry.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How one field of a detail entry narrows from a parent's entry to a child's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Narrowing {
    /// An array of values: the child's values are a subset of the parent's (the RFC 9396 §2 sets: `actions`,
    /// `locations`, `datatypes`, `privileges`).
    Subset,
    /// The same value (the default: `identifier`, `currency`, anything not declared otherwise).
    Equal,
    /// A number: the child's is at most the parent's (a limit such as `amount`).
    AtMost,
}

impl Narrowing {
    /// The config's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Narrowing::Subset => "subset",
            Narrowing::Equal => "equal",
            Narrowing::AtMost => "at_most",
        }
    }

    /// The narrowing the config spells `name`.
    pub fn parse(name: &str) -> Option<Narrowing> {
        [Narrowing::Subset, Narrowing::Equal, Narrowing::AtMost].into_iter().find(|n| n.as_str() == name)
    }
}

/// A detail type an audience accepts: its name, the schema of its entries and how each field narrows.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailType {
    /// The entries' `type`.
    pub name: String,
    /// What every entry of this type must satisfy.
    pub schema: Schema,
    /// Field → how it narrows, as configured; fields not named narrow by [`DetailType::narrowing`]'s defaults.
    pub narrowing: BTreeMap<String, Narrowing>,
}

impl DetailType {
    /// How `field` narrows: as configured, else `subset` for the RFC 9396 §2 set fields, else `equal`.
    pub fn narrowing(&self, field: &str) -> Narrowing {
        match self.narrowing.get(field) {
            Some(n) => *n,
            None if SET_FIELDS.contains(&field) => Narrowing::Subset,
            None => Narrowing::Equal,
        }
    }
}

/// Checks `details` against the types `accepted` for the audience: each entry's type is accepted and the
/// entry satisfies its schema.
pub fn validate(details: &Details, accepted: &[DetailType]) -> Result<()> {
    for (i, entry) in details.entries().enumerate() {
        let name = type_of(entry);
        let Some(t) = accepted.iter().find(|t| t.name == name) else {
            return Err(invalid(format!("authorization_details[{i}]: this audience accepts no such type")));
        };
        t.schema
            .check(&Value::Object(entry.clone()), "")
            .map_err(|why| invalid(format!("authorization_details[{i}] ({}): {why}", t.name)))?;
    }
    Ok(())
}

/// Invariant 1 for details: the child's entries must each be narrower than (or equal to) one of the parent's
/// entries of the same type — fewer `actions`, the same `identifier`, a smaller `amount`. Entries may be
/// dropped; none may be added, widened, or lose a field (a missing field would be a restriction lifted).
/// `parent` is `None` when the subject token carries no details: then nothing is narrowed here (the schema,
/// the catalog and policy still decide).
pub fn narrow(parent: Option<&Details>, child: &Details, accepted: &[DetailType]) -> Result<()> {
    let Some(parent) = parent else { return Ok(()) };
    for (i, entry) in child.entries().enumerate() {
        let t = accepted.iter().find(|t| t.name == type_of(entry));
        if !parent.entries().any(|p| narrower(entry, p, t)) {
            return Err(invalid(format!(
                "authorization_details[{i}] is not a narrowing of the subject token's authorization_details"
            )));
        }
    }
    Ok(())
}

/// Whether `child` is `parent` or narrower, field by field.
fn narrower(child: &Map<String, Value>, parent: &Map<String, Value>, t: Option<&DetailType>) -> bool {
    if child.len() != parent.len() || type_of(child) != type_of(parent) {
        return false;
    }
    let how = |field: &str| match t {
        Some(t) => t.narrowing(field),
        None if SET_FIELDS.contains(&field) => Narrowing::Subset,
        None => Narrowing::Equal,
    };
    parent.iter().all(|(field, p)| {
        let Some(c) = child.get(field) else { return false };
        match how(field) {
            Narrowing::Equal => c == p,
            Narrowing::Subset => match (c, p) {
                (Value::Array(c), Value::Array(p)) => c.iter().all(|v| p.contains(v)),
                _ => c == p,
            },
            Narrowing::AtMost => match (c.as_f64(), p.as_f64()) {
                (Some(c), Some(p)) => c <= p,
                _ => c == p,
            },
        }
    })
}

/// What a forward-auth route asks of a token's details: an entry of `type` whose `actions` hold every one
/// of `actions` (and the action the request's method maps to, [`method_action`]) and whose fields equal
/// `fields` — values of the form `{name}` are the route path's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The entry's `type`.
    pub kind: String,
    /// Actions the entry must allow.
    pub actions: Vec<String>,
    /// Field → the string it must equal; `{name}` is the path parameter `name`.
    pub fields: BTreeMap<String, String>,
    /// Whether the original request's method adds its action ([`method_action`]).
    pub map_methods: bool,
}

/// The action an HTTP method needs when a route maps methods: `GET`/`HEAD`/`OPTIONS` → `read`,
/// `DELETE` → `delete`, any other method → `write`.
pub fn method_action(method: &str) -> &'static str {
    match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" | "OPTIONS" => "read",
        "DELETE" => "delete",
        _ => "write",
    }
}

impl Requirement {
    /// Whether one of `details` satisfies the requirement for a request with these path parameters and method
    /// (`None`: the gateway did not say; then a route that maps methods is not satisfied).
    pub fn satisfied_by(
        &self,
        details: Option<&Details>,
        params: &BTreeMap<String, String>,
        method: Option<&str>,
    ) -> bool {
        let mut actions: Vec<&str> = self.actions.iter().map(String::as_str).collect();
        if self.map_methods {
            match method {
                Some(m) => actions.push(method_action(m)),
                None => return false,
            }
        }
        let Some(details) = details else { return false };
        let wanted: Option<Vec<(&str, &str)>> = self
            .fields
            .iter()
            .map(|(field, value)| {
                let resolved = match value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                    Some(name) => params.get(name).map(String::as_str)?,
                    None => value.as_str(),
                };
                Some((field.as_str(), resolved))
            })
            .collect();
        let Some(wanted) = wanted else { return false };
        details.entries().any(|entry| {
            type_of(entry) == self.kind
                && actions.iter().all(|a| {
                    entry.get("actions").and_then(Value::as_array).is_some_and(|held| held.iter().any(|h| h == a))
                })
                && wanted.iter().all(|(field, value)| entry.get(*field).and_then(Value::as_str) == Some(*value))
        })
    }
}

/// A JSON Schema of the subset this module validates, compiled from the config once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schema {
    kind: Option<Vec<String>>,
    one_of_values: Option<Vec<Value>>,
    properties: BTreeMap<String, Schema>,
    required: Vec<String>,
    closed: bool,
    items: Option<Box<Schema>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
}

const TYPES: [&str; 7] = ["object", "array", "string", "number", "integer", "boolean", "null"];

impl Schema {
    /// Compiles `value`; a keyword outside the subset, or a malformed one, is an error naming where.
    pub fn compile(value: &Value) -> std::result::Result<Schema, String> {
        Schema::compile_at(value, "", 0)
    }

    fn compile_at(value: &Value, at: &str, level: usize) -> std::result::Result<Schema, String> {
        let Value::Object(o) = value else { return Err(format!("{at}: a schema is a table")) };
        if level > MAX_DEPTH {
            return Err(format!("{at}: nested too deeply"));
        }
        let mut s = Schema::default();
        let count = |k: &str, v: &Value| v.as_u64().ok_or_else(|| format!("{at}/{k}: a non-negative integer"));
        for (k, v) in o {
            match k.as_str() {
                "$schema" | "$comment" | "title" | "description" => {}
                "type" => {
                    let names: Vec<String> = match v {
                        Value::String(t) => vec![t.clone()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).map(String::from).collect(),
                        _ => vec![],
                    };
                    if names.is_empty() || !names.iter().all(|n| TYPES.contains(&n.as_str())) {
                        return Err(format!("{at}/type: one of {}", TYPES.join(", ")));
                    }
                    s.kind = Some(names);
                }
                "enum" => s.one_of_values = Some(v.as_array().cloned().ok_or(format!("{at}/enum: an array"))?),
                "const" => s.one_of_values = Some(vec![v.clone()]),
                "properties" => {
                    let props = v.as_object().ok_or(format!("{at}/properties: a table"))?;
                    for (name, p) in props {
                        s.properties.insert(name.clone(), Schema::compile_at(p, &format!("{at}/{name}"), level + 1)?);
                    }
                }
                "required" => {
                    s.required = v
                        .as_array()
                        .and_then(|r| r.iter().map(|n| n.as_str().map(String::from)).collect())
                        .ok_or(format!("{at}/required: an array of strings"))?;
                }
                "additionalProperties" => match v {
                    Value::Bool(b) => s.closed = !b,
                    _ => return Err(format!("{at}/additionalProperties: only true or false")),
                },
                "items" => s.items = Some(Box::new(Schema::compile_at(v, &format!("{at}/items"), level + 1)?)),
                "minItems" => s.min_items = Some(count(k, v)?),
                "maxItems" => s.max_items = Some(count(k, v)?),
                "uniqueItems" => s.unique_items = v.as_bool().ok_or(format!("{at}/uniqueItems: a boolean"))?,
                "minimum" => s.minimum = Some(v.as_f64().ok_or(format!("{at}/minimum: a number"))?),
                "maximum" => s.maximum = Some(v.as_f64().ok_or(format!("{at}/maximum: a number"))?),
                "minLength" => s.min_length = Some(count(k, v)?),
                "maxLength" => s.max_length = Some(count(k, v)?),
                other => return Err(format!("{at}: `{other}` is not a supported schema keyword")),
            }
        }
        Ok(s)
    }

    /// Checks `value`; the error names the first field that fails, never its value.
    pub fn check(&self, value: &Value, at: &str) -> std::result::Result<(), String> {
        let here = if at.is_empty() { "the entry" } else { at };
        if let Some(kinds) = &self.kind
            && !kinds.iter().any(|k| is_kind(value, k))
        {
            return Err(format!("{here} must be of type {}", kinds.join(" or ")));
        }
        if let Some(values) = &self.one_of_values
            && !values.contains(value)
        {
            return Err(format!("{here} is not one of the allowed values"));
        }
        match value {
            Value::Object(o) => {
                if let Some(missing) = self.required.iter().find(|r| !o.contains_key(*r)) {
                    return Err(format!("{here} lacks `{missing}`"));
                }
                for (k, v) in o {
                    match self.properties.get(k) {
                        Some(p) => p.check(v, &format!("{at}/{k}"))?,
                        None if self.closed && !(at.is_empty() && k == "type") => {
                            return Err(format!("{here} has an unknown field"));
                        }
                        None => {}
                    }
                }
            }
            Value::Array(a) => {
                let n = a.len() as u64;
                if self.min_items.is_some_and(|m| n < m) || self.max_items.is_some_and(|m| n > m) {
                    return Err(format!("{here} has too few or too many items"));
                }
                if self.unique_items && a.iter().enumerate().any(|(i, v)| a[..i].contains(v)) {
                    return Err(format!("{here} repeats an item"));
                }
                if let Some(items) = &self.items {
                    for (i, v) in a.iter().enumerate() {
                        items.check(v, &format!("{at}/{i}"))?;
                    }
                }
            }
            Value::String(s) => {
                let n = s.chars().count() as u64;
                if self.min_length.is_some_and(|m| n < m) || self.max_length.is_some_and(|m| n > m) {
                    return Err(format!("{here} is too short or too long"));
                }
            }
            Value::Number(x) => {
                // A JSON number is always finite here (serde_json parses no NaN or infinity).
                let x = x.as_f64().unwrap_or(0.0);
                if self.minimum.is_some_and(|m| x < m) || self.maximum.is_some_and(|m| x > m) {
                    return Err(format!("{here} is out of range"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn is_kind(v: &Value, kind: &str) -> bool {
    match kind {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crm_case() -> DetailType {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["actions", "identifier"],
            "additionalProperties": false,
            "properties": {
                "actions": {"type": "array", "items": {"enum": ["read", "write"]}, "minItems": 1, "uniqueItems": true},
                "identifier": {"type": "string", "maxLength": 64}
            }
        }))
        .unwrap();
        DetailType { name: "crm_case".into(), schema, narrowing: BTreeMap::new() }
    }

    fn payment() -> DetailType {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["amount", "currency"],
            "properties": {"amount": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}}
        }))
        .unwrap();
        DetailType { name: "payment".into(), schema, narrowing: [("amount".to_string(), Narrowing::AtMost)].into() }
    }

    fn d(v: &Value) -> Details {
        Details::parse(&v.to_string()).unwrap()
    }

    #[test]
    fn the_wire_form_is_a_bounded_array_of_typed_objects() {
        for bad in ["", "nope", "{}", "[1]", "[{}]", "[{\"type\":\"\"}]", "[{\"type\":3}]"] {
            assert_eq!(Details::parse(bad).unwrap_err().code, ErrorCode::InvalidAuthorizationDetails, "{bad}");
        }
        let many = format!("[{}]", vec![r#"{"type":"a"}"#; 17].join(","));
        assert!(Details::parse(&many).is_err());
        assert!(Details::parse(&format!("[{{\"type\":\"{}\"}}]", "a".repeat(9000))).is_err());
        assert!(Details::parse(&format!("[{{\"type\":\"a\",\"x\":{}1{}}}]", "[".repeat(20), "]".repeat(20))).is_err());
        assert_eq!(Details::parse("[]").unwrap(), Details::default());
    }

    #[test]
    fn entries_are_checked_against_their_type_schema() {
        let types = [crm_case(), payment()];
        let ok = d(&json!([{"type": "crm_case", "actions": ["read"], "identifier": "1234"}]));
        assert!(validate(&ok, &types).is_ok());
        for bad in [
            json!([{"type": "other"}]),
            json!([{"type": "crm_case", "actions": ["read"]}]),
            json!([{"type": "crm_case", "actions": ["delete"], "identifier": "1"}]),
            json!([{"type": "crm_case", "actions": [], "identifier": "1"}]),
            json!([{"type": "crm_case", "actions": ["read"], "identifier": "1", "extra": 1}]),
            json!([{"type": "payment", "amount": -1, "currency": "EUR"}]),
        ] {
            assert!(validate(&d(&bad), &types).is_err(), "{bad}");
        }
        assert!(Schema::compile(&json!({"pattern": "x"})).is_err(), "unsupported keywords are refused");
        assert!(Schema::compile(&json!({"type": "thing"})).is_err());
    }

    #[test]
    fn details_only_narrow() {
        let types = [crm_case(), payment()];
        let parent = d(&json!([
            {"type": "crm_case", "actions": ["read", "write"], "identifier": "1234"},
            {"type": "payment", "amount": 50, "currency": "EUR"}
        ]));
        let ok = |c: Value| narrow(Some(&parent), &d(&c), &types).is_ok();
        assert!(ok(json!([{"type": "crm_case", "actions": ["read"], "identifier": "1234"}])));
        assert!(ok(json!([{"type": "payment", "amount": 20, "currency": "EUR"}])));
        assert!(ok(json!([])), "everything may be dropped");
        assert!(!ok(json!([{"type": "crm_case", "actions": ["read", "delete"], "identifier": "1234"}])));
        assert!(!ok(json!([{"type": "crm_case", "actions": ["read"], "identifier": "5678"}])));
        assert!(!ok(json!([{"type": "crm_case", "actions": ["read"]}])), "a field may not disappear");
        assert!(!ok(json!([{"type": "payment", "amount": 51, "currency": "EUR"}])));
        assert!(!ok(json!([{"type": "payment", "amount": 20, "currency": "USD"}])));
        assert!(!ok(json!([{"type": "other", "actions": ["read"]}])));
        assert!(narrow(None, &parent, &types).is_ok());
    }

    #[test]
    fn a_route_requirement_matches_path_parameters_and_methods() {
        let r = Requirement {
            kind: "crm_case".into(),
            actions: vec![],
            fields: [("identifier".to_string(), "{case}".to_string())].into(),
            map_methods: true,
        };
        let token = d(&json!([{"type": "crm_case", "actions": ["read"], "identifier": "1234"}]));
        let params = |c: &str| [("case".to_string(), c.to_string())].into();
        assert!(r.satisfied_by(Some(&token), &params("1234"), Some("GET")));
        assert!(!r.satisfied_by(Some(&token), &params("5678"), Some("GET")));
        assert!(!r.satisfied_by(Some(&token), &params("1234"), Some("POST")));
        assert!(!r.satisfied_by(Some(&token), &params("1234"), None));
        assert!(!r.satisfied_by(None, &params("1234"), Some("GET")));
    }
}
