//! `config diff`: the plan with a unified diff per change, between the stored config and the
//! local file, both rendered as canonical YAML with secrets as `<secret>` (a change of a
//! secret alone is named, never shown).

use std::fmt::Write as _;

use similar::TextDiff;

use super::plan::{Action, Plan};
use super::remote::Remote;
use super::SyncError;
use crate::progress::Progress;

/// How many stored configs [`render`] reads (one per update and delete).
pub fn fetches(plan: &Plan) -> u64 {
    plan.items
        .iter()
        .filter(|i| i.action != Action::Create)
        .count() as u64
}

/// The diff of every planned change, coloured when `color`; `progress` counts the stored
/// configs read.
pub async fn render(
    remote: &Remote,
    plan: &Plan,
    color: bool,
    progress: &Progress,
) -> Result<String, SyncError> {
    let mut out = String::new();
    for item in &plan.items {
        let stored = match item.action {
            Action::Create => String::new(),
            Action::Update | Action::Delete => {
                let stored = remote.get_redacted(&item.name).await?.unwrap_or_default();
                progress.inc(1);
                stored
            }
        };
        let local = item
            .source
            .as_ref()
            .map(|s| s.redacted())
            .unwrap_or_default();
        let old_label = match item.action {
            Action::Create => "/dev/null".to_owned(),
            _ => format!("{} (stored)", item.name),
        };
        let new_label = match &item.source {
            Some(s) => s.path.display().to_string(),
            None => "/dev/null".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}",
            paint(
                color,
                "1",
                &format!("{} {}", item.action.symbol(), item.name)
            )
        );
        if stored == local {
            let _ = writeln!(out, "  only secret values differ (not shown)");
            continue;
        }
        let diff = TextDiff::from_lines(&stored, &local);
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&old_label, &new_label)
            .to_string();
        for line in text.lines() {
            let code = if line.starts_with("+++") || line.starts_with("---") {
                "1"
            } else if line.starts_with('+') {
                "32"
            } else if line.starts_with('-') {
                "31"
            } else if line.starts_with("@@") {
                "36"
            } else {
                ""
            };
            let _ = writeln!(out, "{}", paint(color && !code.is_empty(), code, line));
        }
    }
    Ok(out)
}

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}
