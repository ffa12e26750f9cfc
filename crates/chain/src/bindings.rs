//! Typed bindings (`alloy::sol!`) over the committed ABIs. `scripts/test.sh` fails when those ABIs drift
//! from the Solidity sources, so these always match what is deployed.
#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    OpenToken,
    "../../contracts/abi/OpenToken.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Registry,
    "../../contracts/abi/Registry.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Staking,
    "../../contracts/abi/Staking.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    FeeRouter,
    "../../contracts/abi/FeeRouter.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    RewardDistributor,
    "../../contracts/abi/RewardDistributor.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    OpenGovernor,
    "../../contracts/abi/OpenGovernor.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TimelockController,
    "../../contracts/abi/TimelockController.json"
);
