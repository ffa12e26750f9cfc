//! Why a call reverted, in words: revert data decoded against the committed ABIs of every contract of
//! the suite (their own custom errors and the OpenZeppelin ones they inherit), and the standard
//! `Error(string)` / `Panic(uint256)`.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use alloy::dyn_abi::{DynSolValue, ErrorExt};
use alloy::json_abi::{Error as AbiError, JsonAbi};
use alloy::primitives::Selector;

use crate::ContractKind;

/// A decoded custom error: its name and its arguments, by parameter name, rendered as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    pub name: String,
    pub args: Vec<(String, String)>,
}

fn errors() -> &'static HashMap<Selector, AbiError> {
    static ERRORS: OnceLock<HashMap<Selector, AbiError>> = OnceLock::new();
    ERRORS.get_or_init(|| {
        let mut by_selector = HashMap::new();
        for kind in ContractKind::ALL {
            // the ABIs are compiled in and checked by the crate's tests: one that does not parse adds nothing
            let Ok(abi) = serde_json::from_str::<JsonAbi>(kind.abi_json()) else {
                continue;
            };
            for e in abi.errors() {
                by_selector.entry(e.selector()).or_insert_with(|| e.clone());
            }
        }
        by_selector
    })
}

/// Decodes revert data: a custom error of the suite, or `Error(string)` / `Panic(uint256)` (named
/// `Error` / `Panic`, with the argument `reason` / `code`). `None` for data no ABI of the suite knows.
pub fn decode(data: &[u8]) -> Option<Revert> {
    let selector = Selector::try_from(data.get(..4)?).ok()?;
    if let Some(e) = errors().get(&selector) {
        let decoded = e.decode_error(data).ok()?;
        let args = e
            .inputs
            .iter()
            .zip(decoded.body.iter())
            .map(|(p, v)| (p.name.clone(), render(v)))
            .collect();
        return Some(Revert {
            name: e.name.clone(),
            args,
        });
    }
    use alloy::sol_types::{Panic, Revert as StringRevert, SolError};
    if let Ok(r) = StringRevert::abi_decode(data) {
        return Some(Revert {
            name: "Error".into(),
            args: vec![("reason".into(), r.reason)],
        });
    }
    if let Ok(p) = Panic::abi_decode(data) {
        return Some(Revert {
            name: "Panic".into(),
            args: vec![("code".into(), p.code.to_string())],
        });
    }
    None
}

/// Revert data in words: what [`decode`] finds said as a sentence, or the raw data when nothing
/// knows it.
pub fn describe(data: &[u8]) -> String {
    match decode(data) {
        Some(r) => r.to_string(),
        None => format!(
            "reverted with data {} that no contract of the suite declares",
            alloy::hex::encode_prefixed(data)
        ),
    }
}

fn render(v: &DynSolValue) -> String {
    match v {
        DynSolValue::Bool(b) => b.to_string(),
        DynSolValue::Int(i, _) => i.to_string(),
        DynSolValue::Uint(u, _) => u.to_string(),
        DynSolValue::FixedBytes(w, size) => alloy::hex::encode_prefixed(&w[..*size]),
        DynSolValue::Address(a) => a.to_checksum(None),
        DynSolValue::Bytes(b) => alloy::hex::encode_prefixed(b),
        DynSolValue::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// A unix time (the chain's clock) as `YYYY-MM-DD hh:mm:ss UTC`; the number itself when out of range.
fn when(secs: &str) -> String {
    secs.parse::<i64>()
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .map(|t| format!("{t} (chain time {secs})"))
        .unwrap_or_else(|| secs.to_owned())
}

/// An amount in wei of an 18-decimal token, as OPEN.
fn open(wei: &str) -> String {
    let Ok(v) = wei.parse::<u128>() else {
        return format!("{wei} wei");
    };
    let whole = v / 10u128.pow(18);
    let frac = v % 10u128.pow(18);
    if frac == 0 {
        return format!("{whole} OPEN");
    }
    let frac = format!("{frac:018}");
    format!("{whole}.{} OPEN", frac.trim_end_matches('0'))
}

impl Revert {
    /// The argument called `name`, as rendered; empty when the error has none of that name.
    pub fn arg(&self, name: &str) -> &str {
        self.args
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The sentence for the errors a user of the daemon, the CLI or the web app meets; `None` for the
    /// others (said by name and arguments instead).
    fn sentence(&self) -> Option<String> {
        let a = |n: &str| self.arg(n).to_owned();
        Some(match self.name.as_str() {
            "Error" => format!("the contract refused: {}", a("reason")),
            "Panic" => format!("the contract panicked (code {})", a("code")),
            "ExpiredSignature" | "ERC2612ExpiredSignature" => format!(
                "the signature expired at {}: ask for a new payload and sign it again",
                when(&a("deadline"))
            ),
            "VotesExpiredSignature" => format!("the signature expired at {}", when(&a("expiry"))),
            "InvalidSignature" => format!(
                "the signature was not made by {} over this payload (wrong key, chain or nonce)",
                a("contributor")
            ),
            "InvalidAccountNonce" => format!(
                "the signature's nonce is not {}'s next one ({}): ask for a new payload",
                a("account"),
                a("currentNonce")
            ),
            "DuplicateContribution" => format!(
                "{} already contributed this content to Datanet {} (contribution {})",
                a("contributor"),
                a("datanetId"),
                a("existingContributionId")
            ),
            "NotAllowedContributor" => format!(
                "Datanet {} is permissioned and {} is not on its list of contributors",
                a("datanetId"),
                a("contributor")
            ),
            "UnknownDatanet" => format!("there is no Datanet {}", a("datanetId")),
            "UnknownContribution" => format!("there is no contribution {}", a("contributionId")),
            "UnknownModel" => format!("there is no model {}", a("modelId")),
            "UnknownAgent" => format!("there is no agent {}", a("agentId")),
            "UnknownDatanetVersion" => {
                format!("Datanet {} has no version {}", a("datanetId"), a("version"))
            }
            "NotDatanetOwner" => {
                format!("{} does not own Datanet {}", a("account"), a("datanetId"))
            }
            "NotCurator" => format!(
                "{} is not a curator of Datanet {}",
                a("account"),
                a("datanetId")
            ),
            "NotModelDeveloper" => format!(
                "{} is not the developer of model {}",
                a("account"),
                a("modelId")
            ),
            "NotAgentOwner" => format!("{} does not own agent {}", a("account"), a("agentId")),
            "NotAgentOperator" => {
                format!("{} does not operate agent {}", a("account"), a("agentId"))
            }
            "ContributionNotInDatanet" => format!(
                "contribution {} is not in Datanet {}",
                a("contributionId"),
                a("datanetId")
            ),
            "ContributionAlreadyReviewed" => {
                format!("contribution {} was already reviewed", a("contributionId"))
            }
            "EmptyURI" => "the URI is empty".into(),
            "ZeroHash" => "the content hash is zero".into(),
            "ZeroAddress" => "an address is zero".into(),
            "ZeroAmount" => "the amount is zero".into(),
            "RequestAlreadyPaid" => format!(
                "request {} of {} is already paid",
                a("requestId"),
                a("payer")
            ),
            "ERC20InsufficientBalance" => format!(
                "{} holds {} but {} are needed",
                a("sender"),
                open(&a("balance")),
                open(&a("needed"))
            ),
            "ERC20InsufficientAllowance" => format!(
                "{} may spend {} but {} are needed: approve more first",
                a("spender"),
                open(&a("allowance")),
                open(&a("needed"))
            ),
            "AccessControlUnauthorizedAccount" => format!(
                "{} lacks the role {} this call needs",
                a("account"),
                a("neededRole")
            ),
            "NoPendingRoot" => "no settlement root is pending".into(),
            "NoAcceptedRoot" => "no settlement root is accepted yet".into(),
            "ChallengePeriodActive" => {
                format!("the challenge period runs until {}", when(&a("validAt")))
            }
            "ChallengePeriodOver" => {
                format!("the challenge period ended at {}", when(&a("validAt")))
            }
            "Disputed" => format!(
                "the root of epoch {} is disputed by {}",
                a("epoch"),
                a("disputer")
            ),
            "NotDisputed" => format!("the root of epoch {} is not disputed", a("epoch")),
            "NotPending" => format!("the root of epoch {} is not the pending one", a("epoch")),
            "EpochNotIncreasing" => format!(
                "epoch {} is not after the latest epoch {}",
                a("epoch"),
                a("latest")
            ),
            "InvalidProof" => format!(
                "the proof does not show that {} is owed {} in total",
                a("account"),
                open(&a("cumulativeAmount"))
            ),
            "NothingToClaim" => format!(
                "{} has already claimed {} of {}: nothing is left to claim",
                a("account"),
                open(&a("alreadyClaimed")),
                open(&a("cumulativeAmount"))
            ),
            "InsufficientPool" => format!(
                "the reward pool holds {} but {} are owed",
                open(&a("balance")),
                open(&a("owed"))
            ),
            "InsufficientStake" => format!(
                "only {} is staked but {} was asked for",
                open(&a("staked")),
                open(&a("requested"))
            ),
            "StillUnbonding" => format!("the stake unbonds at {}", when(&a("releaseAt"))),
            "NothingToWithdraw" => format!(
                "{} has nothing to withdraw from agent {}",
                a("staker"),
                a("agentId")
            ),
            _ => return None,
        })
    }
}

impl fmt::Display for Revert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.sentence() {
            return write!(f, "{s} ({})", self.name);
        }
        write!(f, "the contract refused with {}", self.name)?;
        if !self.args.is_empty() {
            let args: Vec<String> = self.args.iter().map(|(n, v)| format!("{n} {v}")).collect();
            write!(f, " ({})", args.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{FeeRouter, OpenToken, Registry};
    use alloy::primitives::{Address, B256, U256};
    use alloy::sol_types::SolError;

    #[test]
    fn an_expired_signature_is_said_with_its_date() {
        let data = Registry::ExpiredSignature {
            deadline: U256::from(1_765_000_000u64),
        }
        .abi_encode();
        let r = decode(&data).unwrap();
        assert_eq!(r.name, "ExpiredSignature");
        assert_eq!(r.arg("deadline"), "1765000000");
        let words = describe(&data);
        assert!(
            words.contains("the signature expired at 2025-12-06 05:46:40 UTC"),
            "{words}"
        );
        assert!(!words.contains("ExpiredSignature {"), "{words}");
    }

    #[test]
    fn amounts_are_said_in_open_and_addresses_checksummed() {
        let spender = Address::repeat_byte(0xab);
        let data = OpenToken::ERC20InsufficientAllowance {
            spender,
            allowance: U256::from(1_500_000_000_000_000_000u128),
            needed: U256::from(2_000_000_000_000_000_000u128),
        }
        .abi_encode();
        let words = describe(&data);
        assert_eq!(
            words,
            format!(
                "{} may spend 1.5 OPEN but 2 OPEN are needed: approve more first (ERC20InsufficientAllowance)",
                spender.to_checksum(None)
            )
        );
    }

    #[test]
    fn errors_without_a_sentence_are_said_by_name_and_arguments() {
        let data = FeeRouter::InvalidSplit {
            sum: U256::from(10_001),
        }
        .abi_encode();
        assert_eq!(
            describe(&data),
            "the contract refused with InvalidSplit (sum 10001)"
        );
        let id = B256::repeat_byte(7);
        let data = FeeRouter::RequestAlreadyPaid {
            payer: Address::ZERO,
            requestId: id,
        }
        .abi_encode();
        assert!(describe(&data).contains(&format!("request {id} of")));
    }

    #[test]
    fn string_reverts_panics_and_unknown_data() {
        let data = alloy::sol_types::Revert {
            reason: "nope".into(),
        }
        .abi_encode();
        assert_eq!(describe(&data), "the contract refused: nope (Error)");
        let data = alloy::sol_types::Panic {
            code: U256::from(0x11),
        }
        .abi_encode();
        assert_eq!(describe(&data), "the contract panicked (code 17) (Panic)");
        assert!(describe(&[1, 2, 3, 4, 5]).contains("0x0102030405"));
        assert!(decode(&[1, 2]).is_none());
    }
}
