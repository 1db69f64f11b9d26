//! Shared by `run` and `compile`: choose the component, map shapes, build and compile.

use anyhow::{bail, Context, Result};
use orrery_compiler::{CompileOptions, Plan};
use orrery_models::{Component, InputSpec, WeightTypes};
use std::collections::BTreeMap;

/// Finds the spec an input name (or alias) refers to.
pub fn find_spec<'a>(specs: &'a [InputSpec], name: &str) -> Option<&'a InputSpec> {
    specs.iter().find(|s| s.name == name || s.aliases.iter().any(|a| a == name))
}

/// "`x` [batch..., 8] (float), `mask` [batch, len] (mask, optional)"
pub fn describe_specs(specs: &[InputSpec]) -> String {
    specs
        .iter()
        .map(|s| {
            let mut d = format!("`{}` {} ({:?}", s.name, s.shape_hint, s.kind);
            if !s.aliases.is_empty() {
                d.push_str(&format!(", alias {}", s.aliases.join("/")));
            }
            if s.optional {
                d.push_str(", optional");
            }
            d.push(')');
            d
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maps user-given names to canonical spec names, refusing unknown and duplicate names and
/// requiring every non-optional input.
pub fn canonical_shapes(specs: &[InputSpec], given: &[(String, Vec<usize>)]) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut shapes = BTreeMap::new();
    for (name, shape) in given {
        let Some(spec) = find_spec(specs, name) else {
            bail!("unknown input `{name}`; expected {}", describe_specs(specs));
        };
        if shapes.insert(spec.name.clone(), shape.clone()).is_some() {
            bail!("input `{}` is given twice (directly or through an alias)", spec.name);
        }
    }
    for spec in specs {
        if !spec.optional && !shapes.contains_key(&spec.name) {
            bail!("missing input `{}`: expected shape {} ({:?})", spec.name, spec.shape_hint, spec.kind);
        }
    }
    Ok(shapes)
}

/// Builds and compiles `method` of `component` at `shapes`.
pub fn plan(
    component: &dyn Component,
    method: &str,
    shapes: &BTreeMap<String, Vec<usize>>,
    weights: &WeightTypes,
    options: &CompileOptions,
) -> Result<Plan> {
    let graph = component
        .build(method, shapes, weights)
        .with_context(|| format!("building {} `{method}`", component.class_name()))?;
    Ok(orrery_compiler::compile_with(graph, options)?)
}
