//! Settlement and reconciliation reports of closed clearing windows.
//!
//! Per window, in the report directory:
//! - `window-<id>-settlement.csv`: one row per pair of participants and currency (gross
//!   purchases and refunds with counts, fees, net), one per net position, one per settlement
//!   transfer; a `record` column says which.
//! - `window-<id>-settlement.json`: the same with the window's bounds, counts, the fee schedule
//!   and the rounding rule.
//! - `window-<id>-reconciliation.csv`: per pair, what the switch cleared beside what the ledger
//!   moved, and the difference (which must be zero).
//!
//! Amounts are decimals in major units of their currency. Files are written whole to a
//! temporary name, synced and renamed, so a reader never sees half a report; a window whose
//! reports all exist is not written again.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ledger::clearing::{FeeRate, ROUNDING_RULE};
use ledger::{Currency, Timestamp, balance_to_decimal};
use rust_decimal::Decimal;

use crate::clearing::WindowDetails;

/// The three report files of `window`.
pub fn paths(dir: &Path, window: u64) -> [PathBuf; 3] {
    [
        dir.join(format!("window-{window:06}-settlement.csv")),
        dir.join(format!("window-{window:06}-settlement.json")),
        dir.join(format!("window-{window:06}-reconciliation.csv")),
    ]
}

pub fn unsigned(minor: u128, currency: Currency) -> String {
    match balance_to_decimal(minor, currency) {
        Ok(d) => d.to_string(),
        // Beyond a decimal's 96 bits: print minor units, marked, rather than round.
        Err(_) => format!("{minor}e-{}", currency.exponent()),
    }
}

pub fn signed(minor: i128, currency: Currency) -> String {
    let magnitude = unsigned(minor.unsigned_abs(), currency);
    if minor < 0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// Nanoseconds since the epoch as an RFC 3339 UTC time.
pub fn rfc3339(t: Timestamp) -> String {
    let secs = t.0 / 1_000_000_000;
    let nanos = t.0 % 1_000_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn settlement_csv(d: &WindowDetails) -> String {
    let mut out = String::from(
        "record,currency,acquirer,issuer,participant,purchases,purchase_count,refunds,refund_count,purchase_fees,refund_fees,net,from,to,amount\n",
    );
    for p in &d.settlement.pairs {
        let c = p.key.currency;
        let _ = writeln!(
            out,
            "pair,{},{},{},,{},{},{},{},{},{},{},,,",
            c.code(),
            p.key.acquirer.0,
            p.key.issuer.0,
            unsigned(p.totals.purchases, c),
            p.totals.purchase_count,
            unsigned(p.totals.refunds, c),
            p.totals.refund_count,
            unsigned(p.purchase_fees, c),
            unsigned(p.refund_fees, c),
            signed(p.net, c),
        );
    }
    for &(participant, c, net) in &d.window.positions {
        let _ = writeln!(
            out,
            "position,{},,,{},,,,,,,{},,,",
            c.code(),
            participant.0,
            signed(net, c)
        );
    }
    for t in &d.settlement.transfers {
        let _ = writeln!(
            out,
            "transfer,{},,,,,,,,,,,{},{},{}",
            t.currency.code(),
            t.from.0,
            t.to.0,
            unsigned(u128::from(t.amount), t.currency)
        );
    }
    out
}

fn rate_json(r: &FeeRate) -> serde_json::Value {
    serde_json::json!({ "percent": r.percent.to_string(), "fixed": r.fixed.to_string() })
}

/// Each (currency, acquirer, issuer) pair: its totals, fees and net.
fn pairs_json(d: &WindowDetails) -> Vec<serde_json::Value> {
    d.settlement
        .pairs
        .iter()
        .map(|p| {
            let c = p.key.currency;
            serde_json::json!({
                "currency": c.code(),
                "acquirer": p.key.acquirer.0,
                "issuer": p.key.issuer.0,
                "purchases": unsigned(p.totals.purchases, c),
                "purchase_count": p.totals.purchase_count,
                "refunds": unsigned(p.totals.refunds, c),
                "refund_count": p.totals.refund_count,
                "purchase_fees": unsigned(p.purchase_fees, c),
                "refund_fees": unsigned(p.refund_fees, c),
                "net_to_acquirer": signed(p.net, c),
            })
        })
        .collect()
}

/// Each participant's net position by currency.
fn positions_json(d: &WindowDetails) -> Vec<serde_json::Value> {
    d.window
        .positions
        .iter()
        .map(|&(participant, c, net)| {
            serde_json::json!({
                "participant": participant.0,
                "currency": c.code(),
                "net": signed(net, c),
            })
        })
        .collect()
}

/// The settlement transfers, with the ids the ledger knows them by.
fn transfers_json(d: &WindowDetails) -> Vec<serde_json::Value> {
    let w = &d.window;
    d.settlement
        .transfers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "transfer_id": format!("{:#x}", crate::clearing::settlement_transfer_id(w.id, i as u32)),
                "currency": t.currency.code(),
                "from": t.from.0,
                "to": t.to.0,
                "amount": unsigned(u128::from(t.amount), t.currency),
            })
        })
        .collect()
}

/// The issuers' own fee rates.
fn fee_rates_json(d: &WindowDetails) -> Vec<serde_json::Value> {
    d.fees
        .by_issuer
        .iter()
        .map(|(issuer, (purchase, refund))| {
            serde_json::json!({
                "issuer": issuer.0,
                "purchase": rate_json(purchase),
                "refund": rate_json(refund),
            })
        })
        .collect()
}

pub fn settlement_json(d: &WindowDetails) -> String {
    let w = &d.window;
    let pairs = pairs_json(d);
    let positions = positions_json(d);
    let transfers = transfers_json(d);
    let by_issuer = fee_rates_json(d);
    let differences = d.reconciliation.iter().filter(|l| !l.is_zero()).count();
    let value = serde_json::json!({
        "window": w.id,
        "opened_at": rfc3339(w.opened_at),
        "closed_at": rfc3339(w.closed_at),
        "opened_at_ns": w.opened_at.0,
        "closed_at_ns": w.closed_at.0,
        "transfer_count": w.transfer_count,
        "pair_count": d.settlement.pairs.len(),
        "rounding": ROUNDING_RULE,
        "fees": {
            "paid_by": "acquirer to issuer, at the issuer's rate",
            "purchase": rate_json(&d.fees.purchase),
            "refund": rate_json(&d.fees.refund),
            "by_issuer": by_issuer,
        },
        "pairs": pairs,
        "positions": positions,
        "settlement_transfers": transfers,
        "reconciliation": {
            "reconciled": w.reconciled,
            "pairs_with_differences": differences,
        },
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

pub fn reconciliation_csv(d: &WindowDetails) -> String {
    let mut out = String::from(
        "currency,acquirer,issuer,cleared_purchases,ledger_purchases,cleared_refunds,ledger_refunds,cleared_count,ledger_count,purchases_difference,refunds_difference\n",
    );
    for l in &d.reconciliation {
        let c = l.key.currency;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{}",
            c.code(),
            l.key.acquirer.0,
            l.key.issuer.0,
            unsigned(l.cleared.purchases, c),
            unsigned(l.moved.purchases, c),
            unsigned(l.cleared.refunds, c),
            unsigned(l.moved.refunds, c),
            l.cleared.count(),
            l.moved.count(),
            signed(l.purchases_difference(), c),
            signed(l.refunds_difference(), c),
        );
    }
    out
}

fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes a window's reports unless they all exist. Returns whether it wrote them.
pub fn write(dir: &Path, d: &WindowDetails) -> std::io::Result<bool> {
    let [csv, json, reconciliation] = paths(dir, d.window.id);
    if csv.exists() && json.exists() && reconciliation.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    write_atomically(&reconciliation, &reconciliation_csv(d))?;
    write_atomically(&csv, &settlement_csv(d))?;
    write_atomically(&json, &settlement_json(d))?;
    if !d.window.reconciled {
        tracing::error!(
            window = d.window.id,
            report = %reconciliation.display(),
            "RECONCILIATION FAILED: the ledger's movements differ from the cleared totals"
        );
        metrics::counter!("switch_clearing_reconciliation_failures_total").increment(1);
    }
    tracing::info!(
        window = d.window.id,
        transfers = d.window.transfer_count,
        positions = d.window.positions.len(),
        dir = %dir.display(),
        "clearing window closed and settled; reports written"
    );
    Ok(true)
}

/// Sums a decimal column, for tests and tools reading the reports back.
pub fn parse_amount(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text).ok()
}
