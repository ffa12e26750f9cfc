//! Every event of every contract, driven on a real anvil with alloy, lands in its table with the right values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::send;

use alloy::primitives::{Address, U256, keccak256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::Filter;
use alloy::sol_types::{SolCall, SolValue};
use common::{TestChain, ether};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{
    FeeRouter, OpenGovernor, OpenToken, Registry, RewardDistributor, Staking,
};
use openledger_indexer::query::{ChainIndex, ContributionStatus};
use sqlx::PgPool;

async fn advance(chain: &TestChain, seconds: u64, blocks: u64) {
    let p = chain.plain();
    p.anvil_increase_time(seconds).await.unwrap();
    p.anvil_mine(Some(blocks.max(1)), None).await.unwrap();
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn every_event_lands_in_its_table(pool: PgPool) {
    let chain = TestChain::start().await;
    let d = &chain.deployment;
    let addr = |k| d.address(k).unwrap();
    let (holder, settler, user, owner, contributor, dev) = (
        TestChain::address_of(0),
        TestChain::address_of(1),
        TestChain::address_of(2),
        TestChain::address_of(3),
        TestChain::address_of(4),
        TestChain::address_of(5),
    );
    let timelock = addr(ContractKind::TimelockController);
    let token = |i| OpenToken::new(addr(ContractKind::OpenToken), chain.actor(i));
    let registry = |i| Registry::new(addr(ContractKind::Registry), chain.actor(i));
    let staking = |i| Staking::new(addr(ContractKind::Staking), chain.actor(i));
    let router = |i| FeeRouter::new(addr(ContractKind::FeeRouter), chain.actor(i));
    let pool_c = |i| RewardDistributor::new(addr(ContractKind::RewardDistributor), chain.actor(i));
    let governor = |i| OpenGovernor::new(addr(ContractKind::OpenGovernor), chain.actor(i));

    // token: transfers, approvals, delegation
    for who in [user, owner, contributor, dev] {
        send!(token(0).transfer(who, ether(1_000)));
    }
    send!(token(0).delegate(holder));

    // Registry: a Datanet and everything that happens to it
    send!(token(3).approve(addr(ContractKind::Registry), ether(10)));
    send!(registry(3).createDatanet("ipfs://dn".into(), vec!["law".into()], true, vec![]));
    let dn = U256::from(1);
    send!(registry(3).setDatanetMetadata(dn, "ipfs://dn2".into()));
    send!(registry(3).setCurator(dn, user, true));
    send!(registry(3).setContributorsAllowed(dn, vec![contributor], true));
    let h1 = keccak256("row one");
    let h2 = keccak256("row two");
    send!(registry(4).contribute(dn, h1, "ipfs://r1".into()));
    send!(registry(4).contribute(dn, h2, "ipfs://r2".into()));
    send!(registry(2).reviewContributions(dn, vec![U256::from(1)], true));
    send!(registry(3).reviewContributions(dn, vec![U256::from(2)], false));
    send!(registry(3).publishVersion(dn, keccak256("v1"), 1, "ipfs://v1".into()));
    send!(registry(3).transferDatanetOwnership(dn, user));
    let spec = Registry::ModelSpec {
        baseModel: "SmolLM2-135M-Instruct".into(),
        baseModelHash: keccak256("gguf"),
        datanetIds: vec![dn],
        datanetVersions: vec![1],
        trainingConfigHash: keccak256("cfg"),
        metadataURI: "ipfs://model".into(),
    };
    send!(registry(5).registerModel(spec));
    let model = U256::from(1);
    send!(registry(5).publishAdapter(model, keccak256("w1"), "ipfs://w1".into()));
    send!(registry(5).registerAgent(model, owner, "ipfs://agent".into()));
    send!(registry(5).setAgentOperator(U256::from(1), contributor));
    send!(registry(5).transferModel(model, owner));

    // Staking: stake, unstake, withdraw, slash (by the timelock, impersonated)
    send!(token(4).approve(addr(ContractKind::Staking), ether(100)));
    send!(staking(4).stake(U256::from(1), ether(100)));
    send!(staking(4).unstake(U256::from(1), ether(40)));
    advance(&chain, 7 * 86_400 + 1, 1).await;
    send!(staking(4).withdraw(U256::from(1)));
    let slash = Staking::slashCall {
        agentId: U256::from(1),
        staker: contributor,
        amount: ether(5),
        incidentId: keccak256("incident"),
    };
    chain
        .impersonated(timelock, addr(ContractKind::Staking), slash.abi_encode())
        .await;

    // FeeRouter: a payment, and a split change by governance
    send!(token(2).approve(addr(ContractKind::FeeRouter), ether(100)));
    let req = keccak256("request-1");
    send!(router(2).payInference(model, req, ether(50)));
    let split = FeeRouter::setSplitCall {
        newSplit: FeeRouter::Split {
            burnBps: 0,
            developerBps: 5000,
            treasuryBps: 0,
            poolBps: 5000,
        },
    };
    chain
        .impersonated(timelock, addr(ContractKind::FeeRouter), split.abi_encode())
        .await;

    // RewardDistributor: propose, supersede, revoke, propose, accept, claim
    // a one-leaf tree: root = leaf = keccak(keccak(abi.encode(account, amount)))
    let leaf = keccak256(keccak256((contributor, ether(3)).abi_encode_params()));
    send!(pool_c(1).proposeRoot(1, keccak256("bad"), ether(1), "ipfs://e1".into()));
    send!(pool_c(1).proposeRoot(2, keccak256("worse"), ether(1), "ipfs://e2".into()));
    chain
        .impersonated(
            timelock,
            addr(ContractKind::RewardDistributor),
            RewardDistributor::revokeRootCall {
                epoch: 2,
                root: keccak256("worse"),
            }
            .abi_encode(),
        )
        .await;
    send!(pool_c(1).proposeRoot(3, leaf, ether(3), "ipfs://e3".into()));
    advance(&chain, 3_601, 1).await;
    send!(pool_c(2).acceptRoot());
    send!(pool_c(2).claim(contributor, ether(3), vec![]));

    // Governance: a proposal that passes, is queued and executed (changes the challenge delay)
    let target = addr(ContractKind::RewardDistributor);
    let calldata = RewardDistributor::setChallengeDelayCall { delay: 120 }.abi_encode();
    send!(governor(0).propose(
        vec![target],
        vec![U256::ZERO],
        vec![calldata.clone().into()],
        "delay 120".into()
    ));
    let proposal_id = governor(0)
        .hashProposal(
            vec![target],
            vec![U256::ZERO],
            vec![calldata.clone().into()],
            keccak256("delay 120"),
        )
        .call()
        .await
        .unwrap();
    advance(&chain, 1, 2).await;
    send!(governor(0).castVote(proposal_id, 1));
    advance(&chain, 1, 51).await;
    send!(governor(0).queue(
        vec![target],
        vec![U256::ZERO],
        vec![calldata.clone().into()],
        keccak256("delay 120")
    ));
    advance(&chain, 61, 1).await;
    send!(governor(0).execute(
        vec![target],
        vec![U256::ZERO],
        vec![calldata.into()],
        keccak256("delay 120")
    ));

    // ---- index, then compare with the chain
    let indexer = chain.index(&pool, chain.config()).await;
    assert_eq!(indexer.indexed_through(), chain.head().await);

    // never a missed event: chain_events holds exactly the suite's logs
    let addresses: Vec<Address> = ContractKind::ALL.iter().map(|k| addr(*k)).collect();
    let logs = chain
        .plain()
        .get_logs(&Filter::new().address(addresses).from_block(0))
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, logs.len(), "one row per log");

    // every event name the suite emitted here has rows
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT contract, event FROM chain_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (c, e) in [
        ("OpenToken", "Transfer"),
        ("OpenToken", "Approval"),
        ("OpenToken", "Allocated"),
        ("OpenToken", "DelegateChanged"),
        ("OpenToken", "DelegateVotesChanged"),
        ("Registry", "DatanetCreated"),
        ("Registry", "DatanetMetadataUpdated"),
        ("Registry", "CuratorSet"),
        ("Registry", "ContributorAllowed"),
        ("Registry", "ContributionSubmitted"),
        ("Registry", "ContributionReviewed"),
        ("Registry", "DatanetVersionPublished"),
        ("Registry", "DatanetOwnershipTransferred"),
        ("Registry", "ModelRegistered"),
        ("Registry", "AdapterPublished"),
        ("Registry", "AgentRegistered"),
        ("Registry", "AgentOperatorChanged"),
        ("Registry", "ModelDeveloperTransferred"),
        ("Staking", "Staked"),
        ("Staking", "UnstakeRequested"),
        ("Staking", "Withdrawn"),
        ("Staking", "Slashed"),
        ("FeeRouter", "InferencePaid"),
        ("FeeRouter", "SplitSet"),
        ("RewardDistributor", "RootProposed"),
        ("RewardDistributor", "RootSuperseded"),
        ("RewardDistributor", "RootRevoked"),
        ("RewardDistributor", "RootAccepted"),
        ("RewardDistributor", "Claimed"),
        ("RewardDistributor", "ChallengeDelaySet"),
        ("RewardDistributor", "DisputeBondSet"),
        ("OpenGovernor", "ProposalCreated"),
        ("OpenGovernor", "VoteCast"),
        ("OpenGovernor", "ProposalQueued"),
        ("OpenGovernor", "ProposalExecuted"),
        ("TimelockController", "CallScheduled"),
        ("TimelockController", "CallExecuted"),
        ("TimelockController", "RoleGranted"),
    ] {
        assert!(
            kinds.contains(&(c.to_string(), e.to_string())),
            "{c}.{e} not indexed"
        );
    }

    // typed tables hold the right values
    let q = ChainIndex::new(pool.clone(), d).unwrap();
    let datanet = q.datanet(dn).await.unwrap().expect("datanet indexed");
    assert_eq!(datanet.owner, user, "owner after transfer");
    assert_eq!(datanet.metadata_uri, "ipfs://dn2", "metadata after update");
    assert_eq!(datanet.tags, vec!["law".to_string()]);
    assert!(datanet.permissioned);
    assert_eq!((datanet.contribution_count, datanet.accepted_count), (2, 1));
    assert_eq!(datanet.latest_version, Some(U256::from(1)));
    let contributions = q.contributions_by_datanet(dn, None, 10, 0).await.unwrap();
    assert_eq!(contributions.len(), 2);
    assert_eq!(contributions[0].status, ContributionStatus::Accepted);
    assert_eq!(contributions[1].status, ContributionStatus::Rejected);
    assert_eq!(contributions[0].content_hash, h1);
    assert_eq!(contributions[0].contributor, contributor);
    let accepted = q
        .contributions_by_datanet(dn, Some(ContributionStatus::Accepted), 10, 0)
        .await
        .unwrap();
    assert_eq!(accepted, contributions[..1]);
    let stats = q.datanet_stats(dn).await.unwrap();
    assert_eq!((stats.pending, stats.accepted, stats.rejected), (0, 1, 1));
    assert_eq!(q.contribution_by_content(h2).await.unwrap().len(), 1);
    let versions = q.versions(dn).await.unwrap();
    assert_eq!(versions[0].root, keccak256("v1"));
    let m = q.model(model).await.unwrap().expect("model indexed");
    assert_eq!(m.developer, owner, "developer after transfer");
    assert_eq!(m.datanet_ids, vec![dn]);
    assert_eq!(m.base_model_hash, keccak256("gguf"));
    let payments = q.payments_by_payer(user, 10, 0).await.unwrap();
    assert_eq!(payments.len(), 1);
    let p = &payments[0];
    assert_eq!(
        (p.amount, p.request_id, p.model_id),
        (ether(50), req, model)
    );
    assert_eq!(
        p.burned + p.developer_amount + p.treasury_amount + p.pool_amount,
        p.amount,
        "parts sum to the fee"
    );
    assert_eq!(p.pool_amount, ether(20));
    let epochs = q.reward_epochs().await.unwrap();
    let statuses: Vec<&str> = epochs.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(statuses, vec!["superseded", "revoked", "accepted"]);
    let claims = q.claims_by_account(contributor).await.unwrap();
    assert_eq!(
        (claims[0].amount, claims[0].epoch),
        (ether(3), U256::from(3))
    );
    let positions = q.stake_positions(U256::from(1)).await.unwrap();
    assert_eq!(positions.len(), 1);
    assert_eq!(
        (positions[0].staked, positions[0].unbonding),
        (ether(55), U256::ZERO),
        "100 - 40 unstaked - 5 slashed"
    );
    let (agent_operator,): (String,) = sqlx::query_as("SELECT operator FROM agents_current")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(agent_operator, format!("{contributor:#x}"));
    let (slashed, burned): (String, bool) =
        sqlx::query_as("SELECT from_staked::text, burned FROM slashes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((slashed, burned), (ether(5).to_string(), true));
    let allocated: String = sqlx::query_scalar("SELECT sum(amount)::text FROM token_allocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        allocated, "1000000000000000000000000000",
        "the whole genesis supply"
    );
    let (support, proposer): (i16, String) =
        sqlx::query_as("SELECT v.support, p.proposer FROM governance_votes v JOIN governance_proposals p USING (proposal_id)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((support, proposer), (1, format!("{holder:#x}")));
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM governance_proposal_outcomes ORDER BY block_number",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec!["queued", "executed"]);
    let delay_changes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parameter_changes WHERE parameter = 'ChallengeDelaySet' AND params->>'newDelay' = '120'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(delay_changes, 1, "the executed proposal's parameter change");
    // the dispute bond set at deployment is a parameter too
    let bond: Option<String> = sqlx::query_scalar(
        "SELECT params->>'newBond' FROM parameter_changes WHERE contract = 'RewardDistributor' AND parameter = 'DisputeBondSet'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(
        bond.as_deref(),
        Some("10000000000000000000"),
        "the bond of config/local.json"
    );
    let settler_granted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parameter_changes WHERE parameter = 'RoleGranted' AND params->>'account' = $1",
    )
    .bind(format!("{settler:#x}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settler_granted, 1);
}
