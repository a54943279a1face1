//! Writing a calibrated `adequacy:` block into one route of a policy file, keeping the
//! rest of the file (comments included) as the operator wrote it. The result is parsed and
//! validated before it replaces the file, through a temporary file renamed into place.

use std::path::Path;

use super::EvalError;

/// `text` with route `route`'s `adequacy:` block replaced by `block` (or added after the
/// route's `name:` line).
pub fn with_adequacy(text: &str, route: &str, block: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let start = lines
        .iter()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix("- name:")
                .or_else(|| t.strip_prefix("name:"))
                .is_some_and(|n| n.trim().trim_matches('"').trim_matches('\'') == route)
        })
        .ok_or_else(|| format!("no route named `{route}` (a `- name: {route}` line)"))?;
    let dash = indent(lines[start]);
    // the route's keys sit two columns right of its dash (or at the name's own column)
    let key_col = if lines[start].trim_start().starts_with('-') {
        dash + 2
    } else {
        dash
    };
    let end = (start + 1..lines.len())
        .find(|&i| {
            let l = lines[i];
            !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) < key_col
        })
        .unwrap_or(lines.len());
    let pad = " ".repeat(key_col);
    let new_block: Vec<String> = block.lines().map(|l| format!("{pad}{l}")).collect();
    let existing = (start + 1..end)
        .find(|&i| indent(lines[i]) == key_col && lines[i].trim_start().starts_with("adequacy:"));
    let mut out: Vec<String> = Vec::new();
    match existing {
        Some(a) => {
            let a_end = (a + 1..end)
                .find(|&i| !lines[i].trim().is_empty() && indent(lines[i]) <= key_col)
                .unwrap_or(end);
            out.extend(lines[..a].iter().map(|s| s.to_string()));
            out.extend(new_block);
            out.extend(lines[a_end..].iter().map(|s| s.to_string()));
        }
        None => {
            out.extend(lines[..=start].iter().map(|s| s.to_string()));
            out.extend(new_block);
            out.extend(lines[start + 1..].iter().map(|s| s.to_string()));
        }
    }
    Ok(out.join("\n") + "\n")
}

/// Writes the block into `path` when the result is a valid policy.
pub fn write_adequacy(path: &Path, route: &str, block: &str) -> Result<(), EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Read(path.into(), e))?;
    let next = with_adequacy(&text, route, block)
        .map_err(|m| EvalError::Usage(format!("{}: {m}", path.display())))?;
    edgewise_gateway::policy::parse(&[(path.to_path_buf(), next.clone())])
        .map_err(|d| EvalError::Usage(format!("the calibrated policy would not be valid:\n{d}")))?;
    let tmp = path.with_extension("calibrating");
    let io = |e| EvalError::Write(path.into(), e);
    std::fs::write(&tmp, next).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::with_adequacy;

    const POLICY: &str = "routes:\n  # chat\n  - name: generate\n    match:\n      tasks: [generate]\n    min_quality: 0.1\n\n  - name: encoders\n    space: x\n";
    const BLOCK: &str = "adequacy:\n  estimator: cascade\n  threshold: -1.5\n";

    #[test]
    fn the_block_lands_in_its_route_and_replaces_an_old_one() {
        let once = with_adequacy(POLICY, "generate", BLOCK).unwrap();
        assert!(
            once.contains("  - name: generate\n    adequacy:\n      estimator: cascade\n      threshold: -1.5\n    match:"),
            "{once}"
        );
        assert!(once.contains("  # chat\n") && once.contains("  - name: encoders\n    space: x\n"));
        let twice = with_adequacy(&once, "generate", &BLOCK.replace("-1.5", "-2.0")).unwrap();
        assert_eq!(twice.matches("adequacy:").count(), 1, "{twice}");
        assert!(twice.contains("threshold: -2.0") && !twice.contains("-1.5"));
        // the policy still parses, and the cascade is in the right route
        let p = edgewise_gateway::policy::parse(&[("p.yaml".into(), twice)]).unwrap();
        assert!(matches!(
            p.routes[0].adequacy,
            edgewise_gateway::routing::Adequacy::Cascade(_)
        ));
        assert_eq!(
            p.routes[1].adequacy,
            edgewise_gateway::routing::Adequacy::Static
        );
        assert!(
            with_adequacy(POLICY, "nope", BLOCK)
                .unwrap_err()
                .contains("`nope`")
        );
    }
}
