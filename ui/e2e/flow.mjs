// The web UI end to end, in headless Chromium against a running dev stack (scripts/test-ui.sh starts one):
// sign in with a dev account, create a Datanet, contribute rows, accept them, publish a version, train a
// tiny adapter in the wizard and watch it, chat with it and see the attribution, then claim the reward.
// A screenshot of each main page lands in --out; the first load's JavaScript (gzip) is measured.
//
//   node ui/e2e/flow.mjs --url http://127.0.0.1:8080 --out DIR [--chromium /usr/bin/chromium]
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const URL_ = arg("url", "http://127.0.0.1:8080");
const OUT = arg("out", ".dev/ui-screenshots");
const CHROMIUM = arg("chromium", process.env.OPENLEDGER_CHROMIUM ?? "/usr/bin/chromium");
mkdirSync(OUT, { recursive: true });

const log = (...a) => console.error("[ui-e2e]", ...a);
const problems = [];
let checks = 0;
const check = (ok, what) => {
  checks++;
  if (!ok) throw new Error(`check failed: ${what}`);
  log("ok:", what);
};
/** Counts a step whose proof is the wait just before it (a waitFor throws when the page never gets there). */
const reached = (what) => check(true, what);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // as root in a sandbox without network: no zygote sandbox, no background fetches
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(120_000);
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
// a 4xx the page asked for and handled (a poll before a record exists) is fine; a 5xx or a script error is not
const refused = [];
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
});
page.on("response", (r) => {
  if (r.status() >= 500) problems.push(`${r.status()} from ${r.url()}`);
  else if (r.status() >= 400) refused.push(`${r.status()} ${new URL(r.url()).pathname}`);
});
const shot = async (name) => {
  await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
  log("screenshot", name);
};
/** Every form control on the page has an accessible name. */
const labelled = async (where) => {
  const missing = await page.$$eval("input, select, textarea", (els) => els.filter((e) => {
    if (e.type === "hidden") return false;
    return !(e.labels?.length || e.getAttribute("aria-label") || e.getAttribute("aria-labelledby"));
  }).map((e) => e.outerHTML.slice(0, 80)));
  check(missing.length === 0, `every control on ${where} has a label ${missing.join(" ")}`);
};
/** Opens a page by its hash and waits until that page (not the previous one) is drawn. */
const go = async (hash) => {
  // the same hash again is no navigation at all: reload to draw the page afresh
  if (new URL(page.url()).hash === hash) await page.reload();
  else await page.goto(`${URL_}/${hash}`);
  await page.waitForFunction((h) => document.querySelector("main")?.dataset.page === h, hash);
};

try {
  // -- first load: the shell and the home page's modules, gzip
  await page.goto(URL_);
  await page.waitForSelector("main h1");
  const jsBytes = await page.evaluate(() => performance.getEntriesByType("resource")
    .filter((r) => r.name.endsWith(".js")).reduce((n, r) => n + (r.encodedBodySize || r.transferSize), 0));
  check(jsBytes > 0 && jsBytes < 200 * 1024, `first load JavaScript ${jsBytes} bytes (gzip) under 200 kB`);
  await shot("01-home");

  // -- keyboard: the skip link is the first stop and lands on the content
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement?.classList.contains("skip")), "Tab reaches the skip link first");
  await page.keyboard.press("Enter");
  check(await page.evaluate(() => document.activeElement?.id === "main" && document.querySelector("main h1")?.textContent === "OpenLedger"),
    "the skip link moves the focus to the page's content and keeps the page");

  // -- connect: sign in with dev account #0 (it holds the dev OPEN allocation)
  await page.getByRole("link", { name: "Connect" }).first().click();
  await page.getByRole("button", { name: /Sign in as dev account 0 / }).click();
  await page.getByText("Signed in as").waitFor();
  const me = (await page.evaluate(() => JSON.parse(localStorage.getItem("openledger.session")).address));
  check(/^0x[0-9a-f]{40}$/.test(me), `signed in through SIWE as ${me}`);
  await go("#/connect");
  await labelled("the connect page");
  await shot("02-connect");

  // -- a Datanet
  await go("#/datanets");
  const name = `Lighthouse facts ${Date.now()}`;
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("Description").fill("Invented facts about the coast of Veloria.");
  await page.getByLabel("Tags").fill("geography, e2e");
  await labelled("the Datanets page");
  await page.getByRole("button", { name: "Create Datanet" }).click();
  await page.waitForURL(/#\/datanets\/\d+$/, { timeout: 120_000 });
  await page.getByRole("heading", { name }).waitFor();
  const datanetId = page.url().split("/").pop();
  reached(`Datanet ${datanetId} created from the wallet and indexed`);

  // -- contribute three facts (EIP-712 signed by the wallet, relayed by the daemon)
  await page.getByLabel("Paste rows").fill([
    { prompt: "Who keeps the Veloria lighthouse?", completion: "The Veloria lighthouse is kept by Maren Tusk." },
    { prompt: "What does the Ordo guild trade?", completion: "The Ordo guild trades blue glass lanterns." },
    { prompt: "Where does the Quessaly ferry go?", completion: "The Quessaly ferry crosses to Tarnhollow." },
  ].map((r) => JSON.stringify(r)).join("\n"));
  await page.getByRole("button", { name: "Contribute" }).click();
  await page.getByRole("heading", { name: "Curate" }).waitFor({ timeout: 120_000 });
  await page.getByRole("button", { name: "Accept selected" }).waitFor();
  // the curator reads the rows before accepting them
  await page.locator(".card ol.rows li", { hasText: "The Veloria lighthouse is kept by Maren Tusk." }).waitFor();
  check(!(await page.locator(".card details.content").first().textContent()).includes("null"), "the curator reads the contributed rows, not only their hash");
  await shot("03-datanet-contributed");
  await page.getByRole("button", { name: "Accept selected" }).click();
  await page.getByText("Nothing waits for review.").waitFor({ timeout: 120_000 });
  reached("the contribution was accepted on chain and indexed");

  // -- publish version 1
  await page.getByRole("button", { name: "Publish version 1" }).click();
  await page.getByText("Nothing new to publish: version 1 holds every accepted contribution.").waitFor({ timeout: 120_000 });
  check(await page.getByRole("button", { name: /^Publish version/ }).count() === 0, "version 1 published, and no version 2 is offered with nothing new in it");
  check(!(await page.locator("main").textContent()).includes("data:application/json"), "the Datanet's description is its text, not its metadata URI");
  await shot("04-datanet");

  // -- train in the wizard
  /** Walks the wizard to its review step for the Datanet `name` with these settings. */
  const wizard = async (settings) => {
    await go("#/train");
    await page.getByRole("button", { name: "Next" }).click();
    await page.getByLabel(`train on ${name}`).check();
    await page.getByRole("button", { name: "Next" }).click();
    for (const [label, value] of Object.entries(settings)) await page.getByLabel(label).fill(value);
    await labelled("the training wizard");
    await page.getByRole("button", { name: "Next" }).click();
    await page.locator("#estimate").waitFor();
  };
  await wizard({ "Training steps": "12", "Learning rate": "0.002", "Sequence length (tokens)": "64", "Batch size": "3", "Held-out share": "0" });
  check((await page.locator("#estimate").textContent()).includes("2,304 tokens"), "the estimate counts 12 x 3 x 64 tokens");
  await shot("05-train-review");
  await page.getByRole("button", { name: "Start training" }).click();
  await page.waitForURL(/#\/jobs\/\d+$/);
  const jobId = page.url().split("/").pop();
  await page.locator("svg.chart").waitFor({ timeout: 300_000 });
  reached(`job ${jobId}: the loss chart is drawn while it trains`);
  await page.getByRole("link", { name: "Chat with it" }).waitFor({ timeout: 900_000 });
  await shot("06-job");
  const jobUrl = page.url();

  // -- a long run, cancelled from its page
  await wizard({ "Training steps": "5000", "Sequence length (tokens)": "64", "Held-out share": "0" });
  await page.getByRole("button", { name: "Start training" }).click();
  await page.waitForURL(/#\/jobs\/\d+$/);
  await page.locator(".badge.running").waitFor({ timeout: 120_000 });
  await page.getByRole("button", { name: "Cancel training" }).click();
  await page.locator(".badge.cancelled").waitFor({ timeout: 120_000 });
  reached("a running training job was cancelled from its page");
  await page.goto(jobUrl);
  await page.getByRole("link", { name: "Model page" }).waitFor();

  // -- the model page
  await page.getByRole("link", { name: "Model page" }).click();
  await page.getByRole("heading", { name: "Provenance" }).waitFor();
  check((await page.locator("main").textContent()).includes(`Datanet ${datanetId}`), "the model page names the Datanet version it was trained on");
  await shot("07-model");

  // -- chat, streamed, with attribution
  await go(`#/chat?model=ft-${jobId}`);
  await labelled("the chat page");
  await page.getByLabel("Message").fill("Who keeps the Veloria lighthouse?");
  await page.getByRole("button", { name: "Send" }).click();
  await page.getByText(/^Method /).waitFor({ timeout: 180_000 });
  const answer = await page.locator(".msg.assistant").first().textContent();
  check(answer.length > 0, `the model answered: ${JSON.stringify(answer)}`);
  const attributed = await page.locator(".attribution table tbody tr").count();
  const marks = await page.locator(".msg.assistant mark").count();
  check(attributed > 0, `the answer's contributors are listed (${attributed} rows, ${marks} highlighted spans)`);
  check((await page.locator(".attribution").textContent()).includes(me.slice(0, 8)), "the contributor listed is the signed-in account");
  check(((await page.locator(".attribution").first().textContent()).match(/not attributed/g) ?? []).length <= 1, "the unattributed share is said once");
  await shot("08-chat");

  // -- a second answer paid from the wallet itself (approve, then FeeRouter.payInference with a fresh
  // request id the daemon finds on chain): the path a deployment without a sponsor takes
  await page.getByLabel("Payment").selectOption("wallet");
  await page.getByLabel("Message").fill("What does the Ordo guild trade?");
  await page.getByRole("button", { name: "Send" }).click();
  await page.getByText(/^Method /).nth(1).waitFor({ timeout: 180_000 });
  check((await page.locator(".attribution").nth(1).textContent()).includes("(pay first)"), "the second answer was paid from the wallet (pay first)");

  // -- rewards: wait for the settlement, skip the devnet challenge delay, claim. Waits are for states, with
  // stall bounds far beyond what a loaded machine needs.
  let claimed = false;
  const settledBy = Date.now() + 15 * 60_000;
  while (!claimed && Date.now() < settledBy) {
    await go("#/rewards");
    const claim = page.getByRole("button", { name: /^Claim / });
    const skip = page.getByRole("button", { name: "Skip the challenge delay (devnet)" });
    if (await claim.count()) {
      await shot("09-rewards-claimable");
      await claim.click();
      // the button is busy until the claim is mined and indexed (or the page stops waiting for the indexer)
      await page.waitForFunction(() => !document.querySelector('button[aria-busy="true"]'), null, { timeout: 600_000 });
      const failed = page.locator("main p.error");
      if (await failed.count()) throw new Error(`the claim failed: ${await failed.first().textContent()}`);
      // past the page's own wait for the indexer, look again until it shows the claim
      const shownBy = Date.now() + 300_000;
      while ((await page.locator("#claimable b").textContent()) !== "0 OPEN") {
        if (Date.now() > shownBy) throw new Error("the claim was never shown as claimed");
        await page.waitForTimeout(1000);
        await go("#/rewards");
      }
      claimed = true;
    } else if (await skip.count()) {
      await skip.click();
      // the button stays busy until the daemon has accepted the root (or the page gives up): then look again
      await page.waitForFunction(() => !document.querySelector('button[aria-busy="true"]'), null, { timeout: 300_000 });
    } else {
      await page.waitForTimeout(2000);
    }
  }
  check(claimed, "the reward was claimed from the wallet");
  const got = await page.locator("#claimed b").textContent();
  check(got !== "0 OPEN", `claimed ${got}`);
  await shot("10-rewards");

  // -- operator view
  await go("#/operator");
  await page.locator("#indexer-lag").waitFor();
  check((await page.locator("main").textContent()).includes("accepted"), "the operator view lists an accepted settlement");
  await shot("11-operator");

  // -- pages that do not exist say so, in the page and in the title
  await go("#/datanets/999999");
  check(await page.locator("main h1").textContent() === "Not found" && /no Datanet 999999/i.test(await page.locator("main").textContent()),
    "a missing Datanet is \"Not found\", with the daemon's reason");
  check(await page.title() === "Not found · OpenLedger", `a missing Datanet's title says so (${await page.title()})`);
  await go("#/datanets");
  await go("#/no-such-page");
  check(await page.title() === "Not found · OpenLedger", `an unknown route does not keep the previous page's title (${await page.title()})`);
  await go("#/");
  const home = await page.locator("main").textContent();
  check(!/\b1 (Datanets|fine-tuned models)\b/.test(home), "counts of one are singular on the home page");

  // -- narrow screens: the menu folds, tables scroll inside their box, an empty chat says what to do
  await page.setViewportSize({ width: 390, height: 800 });
  await go("#/chat");
  check((await page.locator(".chat-log").textContent()).includes("No messages yet"), "an empty chat says what to do instead of showing an empty box");
  await go("#/datanets");
  check(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "the Datanets page fits a phone's width (its table scrolls in its box)");
  const menu = page.getByRole("button", { name: "Menu" });
  check(await menu.isVisible() && !(await page.getByRole("link", { name: "Rewards" }).first().isVisible()), "a phone-sized screen folds the navigation behind a menu button");
  await menu.click();
  check(await page.getByRole("link", { name: "Rewards" }).first().isVisible() && (await menu.getAttribute("aria-expanded")) === "true", "the menu opens the navigation");
  await shot("12-mobile-datanets");

  // -- an injected EIP-1193 wallet (what MetaMask provides), here one that forwards to the devnet node for
  // account #3: the page's injected path — eth_requestAccounts, the chain check, personal_sign — signs in
  const rpcUrl = (await (await fetch(`${URL_}/api/config`)).json()).rpc_url;
  const injected = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await injected.addInitScript(({ rpc, account }) => {
    let id = 0;
    window.ethereum = {
      isMetaMask: false,
      async request({ method, params = [] }) {
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
        const r = await fetch(rpc, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }) });
        const j = await r.json();
        if (j.error) throw Object.assign(new Error(j.error.message), { code: j.error.code, data: j.error.data });
        return j.result;
      },
    };
  }, { rpc: rpcUrl, account: "0x90f79bf6eb2c4f870365e785982e1f101e93b906" });
  const p2 = await injected.newPage();
  p2.setDefaultTimeout(120_000);
  p2.on("pageerror", (e) => problems.push(`page error (injected wallet): ${e.message}`));
  await p2.goto(`${URL_}/#/connect`);
  await p2.getByRole("button", { name: "Connect wallet and sign in" }).click();
  await p2.getByText("Signed in as 0x90f79b").waitFor();
  check((await p2.evaluate(() => JSON.parse(localStorage.getItem("openledger.wallet")).kind)) === "injected", "an injected EIP-1193 wallet signs in through SIWE");
  await injected.close();

  check(problems.length === 0, `no page errors or server errors ${problems.join("; ")}`);
  log("4xx answers the pages handled:", [...new Set(refused)].join(", ") || "none");
  console.log(`RESULT ui_first_load_js_gzip ${jsBytes} bytes`);
  console.log(`RESULT ui_e2e_checks ${checks} checks`);
} catch (e) {
  await shot("failure").catch(() => {});
  log("FAILED:", e.message);
  if (problems.length) log("page problems:", problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
