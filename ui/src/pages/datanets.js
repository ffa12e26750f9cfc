// Datanets: browse and search, and create one (the registration fee approved and paid from the wallet).
import { h, busy, field, table, errorTo, until } from "../dom.js";
import { datanetMeta, datanetUri, formatOpen, matchesDatanet, shortHex } from "../format.js";
import { calldata, wordAt } from "../abi.js";
import { keccakHex } from "../keccak.js";

const CREATED = keccakHex("DatanetCreated(uint256,address,string,string[],bool,address[],uint256)");

export async function render(ctx) {
  const all = await ctx.api("/api/datanets?limit=1000");
  const q = h("input", { type: "search", placeholder: "name, tag, owner or id", autocomplete: "off" });
  const list = h("div", {});
  const draw = () => {
    const rows = all.filter((d) => matchesDatanet(d, q.value)).reverse().map((d) => {
      const m = datanetMeta(d.metadata_uri, d.id);
      return [
        h("a", { href: `#/datanets/${d.id}` }, m.name),
        (d.tags ?? []).map((t) => h("span", { class: "badge" }, t)),
        h("code", { title: d.owner }, shortHex(d.owner)),
        `${d.accepted_count} / ${d.contribution_count}`,
        d.latest_version ?? "—",
        d.permissioned ? "permissioned" : "open",
      ];
    });
    list.replaceChildren(table(["Datanet", "tags", "owner", "accepted / all", "version", "who may contribute"], rows,
      all.length ? "No Datanet matches." : "No Datanets yet: create the first.", "Datanets"));
  };
  q.addEventListener("input", draw);
  draw();
  return h("section", {},
    h("h1", {}, "Datanets"),
    h("p", {}, "Curated datasets: contributors add rows, curators accept them, owners publish versions that models train on."),
    field("Search Datanets", q),
    list,
    createForm(ctx));
}

function createForm(ctx) {
  const card = h("div", { class: "card" }, h("h2", {}, "Create a Datanet"));
  const need = ctx.needSignIn("create a Datanet");
  if (need) {
    card.append(need);
    return card;
  }
  const name = h("input", { type: "text", required: true, maxlength: 120 });
  const desc = h("textarea", { rows: 3 });
  const tags = h("input", { type: "text", placeholder: "e.g. geography, trivia" });
  const permissioned = h("input", { type: "checkbox" });
  const curators = h("textarea", { rows: 2, placeholder: "0x… one per line (optional)" });
  const feeNote = h("p", { class: "help" }, "Checking the registration fee…");
  const msg = h("p", { role: "status" });
  const submit = h("button", { type: "submit" }, "Create Datanet");
  const form = h("form", {},
    field("Name", name, "Shown in the list; stored in the Datanet's metadata URI on chain."),
    field("Description", desc, "What belongs in it, and what does not."),
    field("Tags", tags, "Comma-separated domain tags."),
    h("label", { class: "inline" }, permissioned, "Permissioned: only contributors the owner or a curator allows may contribute"),
    field("Curators", curators, "Accounts that may accept or reject contributions besides you."),
    feeNote, submit, msg);
  // read-only: no wallet prompt just for looking at the page
  (async () => {
    const fee = wordAt(await ctx.read(ctx.config.contracts.Registry, calldata("datanetFee()")));
    const held = wordAt(await ctx.read(ctx.config.contracts.OpenToken, calldata("balanceOf(address)", [ctx.address])));
    feeNote.textContent = fee > 0n ? `Registration fee: ${formatOpen(fee)} OPEN (you hold ${formatOpen(held)}); the wallet asks to approve it, then to create.` : "No registration fee.";
  })().catch((e) => (feeNote.textContent = `The registration fee could not be read: ${e.message}`));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    msg.className = "";
    busy(submit, "Creating…", async () => {
      if (!name.value.trim()) throw new Error("give the Datanet a name");
      const cur = curators.value.split(/[\s,]+/).filter(Boolean);
      const bad = cur.find((c) => !/^0x[0-9a-fA-F]{40}$/.test(c));
      if (bad) throw new Error(`curator ${bad} is not an address`);
      const w = await ctx.needWallet();
      const fee = wordAt(await w.call(w.contract("Registry"), calldata("datanetFee()")));
      if (fee > 0n) {
        const allowance = wordAt(await w.call(w.contract("OpenToken"), calldata("allowance(address,address)", [w.address, w.contract("Registry")])));
        if (allowance < fee) {
          msg.textContent = "Approve the registration fee in the wallet…";
          await w.send("OpenToken", "approve(address,uint256)", [w.contract("Registry"), fee], "approving the fee");
        }
      }
      msg.textContent = "Confirm the creation in the wallet…";
      const uri = datanetUri({ name: name.value.trim(), description: desc.value.trim() });
      const t = tags.value.split(",").map((x) => x.trim()).filter(Boolean);
      const r = await w.send("Registry", "createDatanet(string,string[],bool,address[])", [uri, t, permissioned.checked, cur], "creating the Datanet");
      const log = r.logs.find((l) => l.topics[0] === CREATED);
      if (!log) throw new Error("the transaction emitted no DatanetCreated event");
      const id = BigInt(log.topics[1]).toString();
      msg.textContent = `Datanet ${id} created; waiting for the indexer…`;
      await until(() => ctx.api(`/api/datanets/${id}`).then(() => true, () => false));
      ctx.toast(`Datanet ${id} created`);
      ctx.go(`#/datanets/${id}`);
    }, errorTo(msg));
  });
  card.append(form);
  return card;
}
