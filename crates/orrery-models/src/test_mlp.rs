//! `OrreryTestMlp`: a tiny built-in component (linear → GELU → linear) so the CLI contracts
//! (`run`, `compile`, `inspect`) are testable before any real model exists.
//!
//! config.json: `{"_class_name": "OrreryTestMlp", "in_features": 8, "hidden_features": 16,
//! "out_features": 4}` plus optional `"activation": "gelu" | "gelu_tanh" | "relu" | "silu"`
//! (default `gelu`, erf form) and `"torch_dtype"`. Weights: `fc1.weight [hidden, in]`,
//! `fc1.bias [hidden]`, `fc2.weight [out, hidden]`, `fc2.bias [out]` (torch `nn.Linear`).
//! Method `forward`: input `x` `[batch..., in]` (float) → output `y` `[batch..., out]`.

use crate::component::check_method;
use crate::{Component, ComponentConfig, InputKind, InputSpec, ModelError, WeightTypes};
use orrery_ir::{DType, Graph, GraphBuilder, UnaryOp};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct OrreryTestMlp {
    pub in_features: usize,
    pub hidden_features: usize,
    pub out_features: usize,
    pub activation: UnaryOp,
    pub dtype: Option<DType>,
}

impl OrreryTestMlp {
    pub fn from_config(config: &ComponentConfig) -> Result<OrreryTestMlp, ModelError> {
        let activation = match config.opt_str("activation")?.unwrap_or("gelu") {
            "gelu" => UnaryOp::GeluErf,
            "gelu_tanh" => UnaryOp::GeluTanh,
            "relu" => UnaryOp::Relu,
            "silu" => UnaryOp::Silu,
            other => {
                return Err(ModelError::Config {
                    path: config.path.display().to_string(),
                    reason: format!("`activation` {other:?} is not one of gelu, gelu_tanh, relu, silu"),
                })
            }
        };
        let mlp = OrreryTestMlp {
            in_features: config.usize("in_features")?,
            hidden_features: config.usize("hidden_features")?,
            out_features: config.usize("out_features")?,
            activation,
            dtype: config.torch_dtype()?,
        };
        if mlp.in_features == 0 || mlp.hidden_features == 0 || mlp.out_features == 0 {
            return Err(ModelError::Config {
                path: config.path.display().to_string(),
                reason: "`in_features`, `hidden_features` and `out_features` must be positive".into(),
            });
        }
        Ok(mlp)
    }
}

impl Component for OrreryTestMlp {
    fn class_name(&self) -> &str {
        "OrreryTestMlp"
    }

    fn methods(&self) -> &[&'static str] {
        &["forward"]
    }

    fn inputs(&self, method: &str) -> Result<Vec<InputSpec>, ModelError> {
        check_method(self, method)?;
        Ok(vec![InputSpec {
            name: "x".into(),
            aliases: vec![],
            kind: InputKind::Float,
            shape_hint: format!("[batch..., {}]", self.in_features),
            optional: false,
        }])
    }

    fn build(
        &self,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weights: &WeightTypes,
    ) -> Result<Graph, ModelError> {
        let specs = self.inputs(method)?;
        let x_shape = shapes.get("x").ok_or_else(|| ModelError::InputShape {
            name: "x".into(),
            got: vec![],
            expected: specs[0].shape_hint.clone(),
        })?;
        if x_shape.last() != Some(&self.in_features) {
            return Err(ModelError::InputShape {
                name: "x".into(),
                got: x_shape.clone(),
                expected: specs[0].shape_hint.clone(),
            });
        }
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, x_shape.clone())?;
        let w1 = weights.declare(&mut b, "fc1.weight", &[self.hidden_features, self.in_features])?;
        let b1 = weights.declare(&mut b, "fc1.bias", &[self.hidden_features])?;
        let w2 = weights.declare(&mut b, "fc2.weight", &[self.out_features, self.hidden_features])?;
        let b2 = weights.declare(&mut b, "fc2.bias", &[self.out_features])?;
        let h = b.linear("fc1", x, w1, Some(b1))?;
        let a = b.unary("act", self.activation, h)?;
        let y = b.linear("fc2", a, w2, Some(b2))?;
        b.output("y", y)?;
        Ok(b.finish()?)
    }

    fn config_dtype(&self) -> Option<DType> {
        self.dtype
    }
}
