// One Datanet: its versions and contributions; contribute (paste rows or upload a file, sign the EIP-712
// payload in the wallet, the daemon relays it: no gas); curate (accept/reject, for the owner and
// curators); publish a version (owner: the daemon snapshots the accepted contributions, the wallet sends
// the root).
import { h, busy, field, table, badge, sleep, errorTo, until, stat } from "../dom.js";
import { datanetMeta, shortHex, count } from "../format.js";
import { calldata, wordAt } from "../abi.js";
import { rowsToUpload, fileContentType, previewRows, describeFormats } from "../rows.js";

export async function render(ctx, [id], query) {
  const [detail, versions, contributions] = await Promise.all([
    ctx.api(`/api/datanets/${id}`),
    ctx.api(`/api/datanets/${id}/versions`),
    ctx.api(`/api/datanets/${id}/contributions?limit=1000`),
  ]);
  const d = detail; // the Datanet's fields, flattened, and its stats
  const st = detail.stats;
  const meta = datanetMeta(d.metadata_uri, d.id);
  const me = ctx.address;
  const isOwner = me === d.owner.toLowerCase();
  let isCurator = isOwner;
  if (me && !isOwner) {
    try {
      isCurator = wordAt(await ctx.read(ctx.config.contracts.Registry, calldata("isCurator(uint256,address)", [d.id, me]))) !== 0n;
    } catch {
      isCurator = false;
    }
  }
  const filter = h("select", {}, ["all", "pending", "accepted", "rejected"].map((s) => h("option", { value: s }, s)));
  filter.value = query.get("status") ?? "all";
  const highlight = query.get("contribution");
  const contribList = h("div", {});
  // who may read a contribution's rows here (the daemon says the same): its contributor, the curators, and
  // the Datanet's readers once accepted
  const mayRead = (c) => !!me && (isCurator || c.contributor.toLowerCase() === me || (c.status === "accepted" && !d.permissioned));
  const drawContribs = () => {
    const rows = contributions.filter((c) => filter.value === "all" || c.status === filter.value).map((c) => [
      h("span", { id: `contribution-${c.id}`, class: highlight === c.id ? "badge running" : "" }, c.id),
      h("code", { title: c.contributor }, shortHex(c.contributor)),
      badge(c.status),
      mayRead(c) ? contentPreview(ctx, d, c) : h("code", { title: c.content_hash }, shortHex(c.content_hash, 8)),
      h("code", { title: c.tx_hash }, shortHex(c.tx_hash, 8)),
      String(c.block_number),
    ]);
    contribList.replaceChildren(table(["id", "contributor", "state", "content", "transaction", "block"], rows, "No contributions.", "Contributions"));
  };
  filter.addEventListener("change", drawContribs);
  drawContribs();
  const out = h("section", {},
    h("h1", {}, meta.name),
    meta.description ? h("p", {}, meta.description) : null,
    h("p", { class: "muted" }, `Datanet ${d.id} · owner `, h("code", {}, d.owner), ` · ${d.permissioned ? "permissioned" : "open to everyone"}`,
      meta.uri ? [" · metadata ", /^https?:\/\//.test(meta.uri) ? h("a", { href: meta.uri, rel: "noopener" }, meta.uri) : h("code", {}, meta.uri)] : null,
      (d.tags ?? []).length ? " · " : null, (d.tags ?? []).map((t) => h("span", { class: "badge" }, t))),
    h("div", { class: "grid" },
      stat("accepted", st.accepted), stat("pending", st.pending), stat("rejected", st.rejected),
      stat("contributors", st.contributors), stat("versions", st.versions)),
    h("h2", {}, "Versions"),
    table(["version", "contributions", "root", "block"], versions.map((v) => [v.version, v.contribution_count, h("code", { title: v.root }, shortHex(v.root, 8)), String(v.block_number)]),
      "No version yet: the owner publishes one once contributions are accepted.", "Versions"),
    h("h2", {}, "Contributions"),
    field("Show", filter), contribList,
    contributeCard(ctx, d));
  if (isCurator) out.append(curateCard(ctx, d, contributions.filter((c) => c.status === "pending")));
  if (isOwner) out.append(publishCard(ctx, d, st, versions));
  if (highlight) queueMicrotask(() => document.getElementById(`contribution-${highlight}`)?.scrollIntoView({ block: "center" }));
  return out;
}


/** Polls a job until it ends; gives up after `minutes` (a daemon without workers never runs it). */
async function waitJob(ctx, id, minutes = 10) {
  for (let i = 0; i < minutes * 120; i++) {
    const j = await ctx.api(`/api/jobs/${id}`);
    if (["succeeded", "failed", "cancelled"].includes(j.state)) return j;
    await sleep(500);
  }
  throw new Error(`job ${id} did not finish in ${minutes} minutes (does this daemon run workers? see Operator)`);
}

function contributeCard(ctx, d) {
  const card = h("div", { class: "card" }, h("h2", {}, "Contribute"));
  const need = ctx.needSignIn("contribute");
  if (need) {
    card.append(need);
    return card;
  }
  const rows = h("textarea", { rows: 6, placeholder: '{"prompt": "Who keeps the lighthouse?", "completion": "Maren Tusk keeps it."}' });
  const file = h("input", { type: "file", accept: ".jsonl,.txt,.md,.markdown,text/plain,text/markdown,application/jsonl" });
  const msg = h("p", { role: "status" });
  const submit = h("button", { type: "submit" }, "Contribute");
  const mine = h("div", {});
  // which row format the pasted rows are in, as they are typed
  const detected = h("p", { class: "help", "aria-live": "polite" });
  rows.addEventListener("input", () => {
    if (!rows.value.trim()) return detected.replaceChildren();
    try {
      detected.textContent = `Detected: ${describeFormats(rowsToUpload(rows.value).formats)}`;
    } catch (e) {
      detected.textContent = e.message;
    }
  });
  const form = h("form", {},
    field("Paste rows", rows, "JSON Lines ({\"prompt\", \"completion\"}, {\"text\"}, OpenAI chat {\"messages\"}, Alpaca {\"instruction\", \"input\", \"output\"} or ShareGPT {\"conversations\"} per line), prompt<TAB>completion lines, or plain text (one document per paragraph)."),
    detected,
    field("…or upload a file", file, ".jsonl, .txt or .md, up to the daemon's upload limit."),
    h("p", { class: "help" }, "You sign the contribution in your wallet (EIP-712); the daemon sends it on chain and pays the gas."),
    submit, msg);
  const drawMine = async () => {
    const ups = (await ctx.api("/api/uploads?limit=1000")).filter((u) => u.datanet_id === d.id);
    mine.replaceChildren(h("h2", {}, "Your uploads here"), table(["upload", "file", "records", "state", "contribution"],
      ups.map((u) => [String(u.id), u.filename, String(u.records), badge(u.state), u.contribution ? `#${u.contribution.id} (${u.contribution.status})` : "—"]),
      "None yet.", "Your uploads"));
  };
  drawMine().catch(() => {});
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    msg.className = "";
    busy(submit, "Contributing…", async () => {
      let body, type, filename;
      if (file.files?.length) {
        const f = file.files[0];
        body = await f.text();
        type = fileContentType(f.name);
        filename = f.name;
      } else {
        const u = rowsToUpload(rows.value);
        body = u.body;
        type = u.contentType;
        filename = u.format === "jsonl" ? "pasted.jsonl" : "pasted.txt";
      }
      const w = await ctx.needWallet();
      msg.textContent = "Uploading…";
      const up = await ctx.api(`/api/uploads?datanet_id=${encodeURIComponent(d.id)}&filename=${encodeURIComponent(filename)}`, { method: "POST", body, headers: { "content-type": type } });
      // the same content again is the same upload: sign only what is not on its way already
      if (up.state === "confirmed") throw new Error(`this content is already contribution #${up.contribution?.id} of this Datanet`);
      if (up.state === "uploaded" || up.state === "failed") {
        const seen = describeFormats(up.row_formats);
        msg.textContent = `Uploaded ${up.records} record(s)${seen ? ` (${seen})` : ""}. Sign the contribution in your wallet…`;
        const payload = await ctx.api(`/api/uploads/${up.id}/typed-data`);
        const signature = await w.signTypedData(payload.typed_data);
        await ctx.api(`/api/uploads/${up.id}/relay`, { json: { signature, nonce: payload.nonce, deadline: payload.deadline } });
      }
      for (let i = 0; i < 240; i++) {
        const u = await ctx.api(`/api/uploads/${up.id}`);
        msg.textContent = `Contribution ${u.state}…`;
        if (u.state === "confirmed") {
          ctx.toast(`Contribution #${u.contribution?.id} is on chain, pending review`);
          return ctx.refresh();
        }
        if (u.state === "failed") throw new Error(`the relay failed: ${u.error ?? u.relays?.at(-1)?.error ?? "see the upload"}`);
        await sleep(500);
      }
      throw new Error("the contribution was not confirmed in two minutes; it stays in Your uploads");
    }, errorTo(msg));
  });
  card.append(form, mine);
  return card;
}

function curateCard(ctx, d, pending) {
  const card = h("div", { class: "card" }, h("h2", {}, "Curate"));
  if (pending.length === 0) {
    card.append(h("p", { class: "muted" }, "Nothing waits for review."));
    return card;
  }
  const boxes = pending.map((c) => h("input", { type: "checkbox", value: c.id, checked: true, "aria-label": `contribution ${c.id}` }));
  const msg = h("p", { role: "status" });
  const review = (accept) => (ev) => busy(ev.currentTarget, accept ? "Accepting…" : "Rejecting…", async () => {
    const ids = boxes.filter((b) => b.checked).map((b) => b.value);
    if (ids.length === 0) throw new Error("tick at least one contribution");
    const w = await ctx.needWallet();
    msg.textContent = "Confirm in the wallet…";
    await w.send("Registry", "reviewContributions(uint256,uint256[],bool)", [d.id, ids, accept], accept ? "accepting" : "rejecting");
    msg.textContent = "Waiting for the indexer…";
    await until(async () => !(await ctx.api(`/api/datanets/${d.id}/contributions?status=pending&limit=1000`)).some((c) => ids.includes(c.id)));
    ctx.toast(`${ids.length} contribution(s) ${accept ? "accepted" : "rejected"}`);
    ctx.refresh();
  }, errorTo(msg));
  card.append(
    table(["", "id", "contributor", "content"], pending.map((c, i) => [boxes[i], c.id, h("code", { title: c.contributor }, shortHex(c.contributor)), contentPreview(ctx, d, c, true)]), "", "Pending contributions"),
    h("div", { class: "row" },
      h("button", { type: "button", onclick: review(true) }, "Accept selected"),
      h("button", { type: "button", class: "danger", onclick: review(false) }, "Reject selected")),
    msg);
  return card;
}

function publishCard(ctx, d, st, versions) {
  const last = versions.at(-1);
  // accepted contributions are never un-accepted: a version holds all those accepted when it was cut
  const fresh = st.accepted - Number(last?.contribution_count ?? 0);
  const card = h("div", { class: "card" }, h("h2", {}, "Publish a version"),
    h("p", {}, `A version fixes the accepted contributions (${st.accepted} now${last ? `, ${last.contribution_count} in version ${last.version}` : ""}) under one Merkle root on chain; models train on versions.`));
  if (fresh <= 0) {
    card.append(h("p", { class: "muted" }, st.accepted === 0
      ? "Nothing to publish yet: accept contributions first."
      : `Nothing new to publish: version ${last.version} holds every accepted contribution. Accept more to publish version ${versions.length + 1}.`));
    return card;
  }
  const msg = h("p", { role: "status" });
  const b = h("button", { type: "button" }, `Publish version ${versions.length + 1} (${count(fresh, "new contribution")})`);
  b.addEventListener("click", () => busy(b, "Publishing…", async () => {
    const w = await ctx.needWallet();
    msg.textContent = "Snapshotting the accepted contributions…";
    const job = await ctx.api("/api/jobs", { json: { kind: "datanet_snapshot", params: { datanet_id: d.id } } });
    const done = await waitJob(ctx, job.id);
    if (done.state !== "succeeded") throw new Error(`the snapshot ${done.state}: ${done.error ?? ""}`);
    msg.textContent = "Confirm the version in the wallet…";
    const n = versions.length + 1;
    // the snapshot's own URI names its root, where the leaves can be fetched
    await w.send("Registry", "publishVersion(uint256,bytes32,uint64,string)",
      [d.id, done.result.root, done.result.contribution_count, done.result.uri], "publishing the version");
    msg.textContent = "Waiting for the indexer…";
    await until(async () => (await ctx.api(`/api/datanets/${d.id}/versions`)).length >= n);
    ctx.toast(`Version ${n} published`);
    ctx.refresh();
  }, errorTo(msg)));
  card.append(b, msg);
  return card;
}

/**
 * The rows of contribution `c` as the daemon holds them: a disclosure that loads them when opened (`open`:
 * at once, for the review table).
 */
function contentPreview(ctx, d, c, open = false) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const box = h("details", { class: "content" }, h("summary", { title: c.content_hash }, `rows (${shortHex(c.content_hash, 6)})`), body);
  let loaded = false;
  const load = async () => {
    if (loaded) return;
    loaded = true;
    try {
      const res = await ctx.api(`/api/datanets/${d.id}/contributions/${c.id}/content`, { raw: true });
      const { rows, more } = previewRows(await res.text());
      body.replaceChildren(h("ol", { class: "rows" }, rows.map((r) => h("li", {}, r))),
        ...(more ? [h("p", { class: "muted" }, `…and ${count(more, "more row")}`)] : []));
    } catch (e) {
      body.replaceChildren(h("p", { class: "muted" }, e.status === 404 ? "This daemon holds no rows for it (sent without an upload here)." : e.message));
    }
  };
  box.addEventListener("toggle", () => box.open && load());
  if (open) {
    box.open = true;
    load();
  }
  return box;
}
