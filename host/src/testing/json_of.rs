//! Arbitrary JSON made of a parser's own words, in any shape: a property
//! test then reaches the parser's paths instead of failing at the first key.

use proptest::prelude::*;
use serde_json::Value;

/// Values whose strings and keys come from `words`; nesting up to `depth`,
/// at most `breadth` items per array or object.
pub fn json_of(
    words: &'static [&'static str],
    depth: u32,
    breadth: usize,
) -> impl Strategy<Value = Value> {
    let word = move || prop::sample::select(words).prop_map(String::from);
    let leaf = prop_oneof![
        4 => word().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 64, breadth as u32, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..breadth).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..breadth)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
