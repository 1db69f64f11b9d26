//! The readable text form of a graph:
//!
//! ```text
//! input  %0 x: f32[2, 8]
//! weight %1 fc1.weight: bf16[16, 8]
//! %2 fc1 = linear{bias=false}(%0, %1): f32[2, 16]
//! output y = %2
//! ```

use crate::graph::{Graph, NodeKind};
use std::fmt;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.kind {
                NodeKind::Input => writeln!(f, "input  %{i} {}: {}", n.name, n.ty)?,
                NodeKind::Weight => writeln!(f, "weight %{i} {}: {}", n.name, n.ty)?,
                NodeKind::Constant(c) => {
                    let preview: Vec<String> = c.data.iter().take(4).map(|v| format!("{v}")).collect();
                    let more = if c.data.len() > 4 { ", …" } else { "" };
                    writeln!(f, "const  %{i} {}: {} = [{}{more}]", n.name, n.ty, preview.join(", "))?
                }
                NodeKind::Op(op) => {
                    let args: Vec<String> = n.inputs.iter().map(|x| x.to_string()).collect();
                    writeln!(f, "%{i} {} = {op}({}): {}", n.name, args.join(", "), n.ty)?
                }
            }
        }
        for (name, id) in &self.outputs {
            writeln!(f, "output {name} = {id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    #[test]
    fn dump_is_readable() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 8]).unwrap();
        let w = b.weight("fc1.weight", DType::BF16, [16, 8]).unwrap();
        let y = b.linear("fc1", x, w, None).unwrap();
        b.output("y", y).unwrap();
        let text = b.finish().unwrap().to_string();
        assert_eq!(
            text,
            "input  %0 x: f32[2, 8]\nweight %1 fc1.weight: bf16[16, 8]\n\
             %2 fc1 = linear{bias=false}(%0, %1): f32[2, 16]\noutput y = %2\n"
        );
    }
}
