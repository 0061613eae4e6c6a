// PromptEcho frontend: after a Score or Best-of-N node runs, show the prompt with each word coloured by its
// loss (colours computed by the engine, see promptecho/heatmap.py), a tooltip with the exact loss, the reward,
// and a selector when the node scored a batch.
import { app } from "../../scripts/app.js";

const NODES = new Set(["PromptEchoScore", "PromptEchoBestOfN"]);

const STYLE = `
.promptecho-heatmap { font: 13px/1.9 system-ui, sans-serif; color: var(--fg-color, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 6px 8px; overflow-y: auto;
  max-height: 260px; box-sizing: border-box; }
.promptecho-heatmap .pe-head { display: flex; gap: 8px; align-items: center; margin-bottom: 4px; }
.promptecho-heatmap .pe-reward { font-weight: 600; }
.promptecho-heatmap select { background: var(--comfy-menu-bg, #333); color: inherit;
  border: 1px solid var(--border-color, #555); border-radius: 4px; }
.promptecho-heatmap .pe-word { border-radius: 4px; padding: 1px 3px; margin: 0 1px; cursor: help;
  white-space: pre-wrap; }
.promptecho-heatmap .pe-empty { opacity: 0.6; }
.promptecho-heatmap .pe-ranking { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 4px;
  font-variant-numeric: tabular-nums; }
.promptecho-heatmap .pe-rank { border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 0 5px;
  line-height: 1.6; opacity: 0.75; }
.promptecho-heatmap .pe-rank.pe-kept { cursor: pointer; opacity: 1; }
.promptecho-heatmap .pe-rank.pe-on { outline: 2px solid var(--fg-color, #ddd); }
`;

function ensureStyle() {
  if (document.getElementById("promptecho-style")) return;
  const s = document.createElement("style");
  s.id = "promptecho-style";
  s.textContent = STYLE;
  document.head.appendChild(s);
}

function luminance(hex) {
  const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
    .map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
  return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
}

function renderOne(body, r) {
  body.replaceChildren();
  let pos = 0;
  r.words.forEach((w, i) => {
    if (w.start > pos) body.appendChild(document.createTextNode(r.prompt.slice(pos, w.start)));
    const span = document.createElement("span");
    span.className = "pe-word";
    const bg = r.word_colors[i];
    span.style.background = bg;
    span.style.color = luminance(bg) > 0.18 ? "#000" : "#fff";
    span.textContent = w.text;
    span.title = `${w.text}\nloss ${w.loss.toFixed(4)} nats (${w.n_tokens} token${w.n_tokens === 1 ? "" : "s"})`;
    body.appendChild(span);
    pos = w.end;
  });
  if (pos < r.prompt.length) body.appendChild(document.createTextNode(r.prompt.slice(pos)));
}

function rankingRow(ranking, kept, pick) {
  // Best-of-N: the whole ranking (every image of the batch, best first); the kept top_k ones are clickable
  const row = document.createElement("div");
  row.className = "pe-ranking";
  row.title = "ranking, best first (img = index in the input batch)";
  const chips = ranking.map((e, i) => {
    const c = document.createElement("span");
    c.className = "pe-rank" + (i < kept ? " pe-kept" : "");
    c.textContent = `#${i + 1} img ${e.index}: ${e.score.toFixed(3)}`;
    if (i < kept) c.onclick = () => pick(i);
    row.appendChild(c);
    return c;
  });
  return { row, chips };
}

function render(el, results, ranking) {
  el.replaceChildren();
  const n = results ? results.length : 0;
  let sel = null, show = () => {};
  const rank = ranking && ranking.length > 1 ? rankingRow(ranking, n, (i) => {
    if (sel) sel.value = String(i);
    show(i);
  }) : null;
  if (rank) el.appendChild(rank.row);
  if (!n) {
    const p = document.createElement("div");
    p.className = "pe-empty";
    p.textContent = "no PromptEcho heatmap (VQAScore ranking has no per-word losses)";
    el.appendChild(p);
    return;
  }
  const head = document.createElement("div");
  head.className = "pe-head";
  const reward = document.createElement("span");
  reward.className = "pe-reward";
  const body = document.createElement("div");
  show = (i) => {
    const r = results[i];
    reward.textContent = `reward ${r.reward.toFixed(4)}`;
    reward.title = `${r.reduction} CE over ${r.token_losses.length} prompt tokens` +
      (r.truncated_tokens ? `; ${r.truncated_tokens} tokens truncated` : "");
    renderOne(body, r);
    rank?.chips.forEach((c, j) => c.classList.toggle("pe-on", j === i));
  };
  if (n > 1) {
    sel = document.createElement("select");
    results.forEach((r, i) => {
      const o = document.createElement("option");
      const label = ranking ? `rank ${i + 1} (image ${ranking[i].index})` : `image ${i}`;
      o.value = String(i);
      o.textContent = `${label}: ${r.reward.toFixed(3)}`;
      sel.appendChild(o);
    });
    sel.onchange = () => show(Number(sel.value));
    head.appendChild(sel);
  }
  head.appendChild(reward);
  el.append(head, body);
  show(0);
}

app.registerExtension({
  name: "promptecho.heatmap",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    ensureStyle();
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const el = document.createElement("div");
      el.className = "promptecho-heatmap";
      el.textContent = "run the graph to see which prompt words the image supports";
      this.promptechoEl = el;
      // min height keeps a few lines of the prompt visible; longer prompts scroll inside the widget
      this.addDOMWidget("promptecho_heatmap", "promptecho", el, {
        serialize: false, hideOnZoom: false, getMinHeight: () => 150, getMaxHeight: () => 600,
      });
      this.setSize([Math.max(this.size[0], 440), Math.max(this.size[1], this.computeSize()[1])]);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (this.promptechoEl && message?.promptecho) {
        render(this.promptechoEl, message.promptecho, message.ranking);
        this.setSize([this.size[0], Math.max(this.size[1], this.computeSize()[1])]);
        this.setDirtyCanvas?.(true, true);
      }
    };
  },
});
