// evalkit report: sortable tables, trade-off axis choice, sample browser.
// Model output is untrusted: it only ever reaches the page through textContent.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("evalkit-data").textContent);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "nan";
    return Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(3);
  }

  // ---- sortable tables: click a header; numbers sort by value, NaN last
  function cellKey(row, col) {
    const cell = row.cells[col];
    if (cell.dataset.v === undefined) return cell.textContent;
    return cell.dataset.v === "" ? NaN : Number(cell.dataset.v);
  }

  function sortTable(table, col, th) {
    const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellKey(a, col), y = cellKey(b, col);
      if (typeof x === "number") {
        if (Number.isNaN(x)) return Number.isNaN(y) ? 0 : 1;
        if (Number.isNaN(y)) return -1;
        return dir * (x - y);
      }
      return dir * String(x).localeCompare(String(y), undefined, { numeric: true });
    });
    rows.forEach((r) => body.appendChild(r));
  }

  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => sortTable(table, col, th)));
  });

  // ---- trade-off: show the chart of the chosen pair in every run
  const xSel = document.getElementById("tradeoff-x"), ySel = document.getElementById("tradeoff-y");
  function showPair() {
    document.querySelectorAll(".pairs").forEach((box) => {
      let shown = false;
      box.querySelectorAll("figure.pair").forEach((f) => {
        f.hidden = !(f.dataset.x === xSel.value && f.dataset.y === ySel.value);
        shown = shown || !f.hidden;
      });
      box.querySelector(".no-pair").hidden = shown;
    });
  }
  if (xSel && ySel) {
    xSel.addEventListener("change", showPair);
    ySel.addEventListener("change", showPair);
    if (xSel.value === ySel.value && ySel.options.length > 1) ySel.selectedIndex = 1;
    showPair();
  }

  // ---- sample browser
  const runSel = document.getElementById("sb-run"), promptSel = document.getElementById("sb-prompt");
  const aSel = document.getElementById("sb-a"), bSel = document.getElementById("sb-b");
  const side = document.getElementById("sb-side"), cols = document.getElementById("sb-cols");
  const promptText = document.getElementById("sb-prompt-text");
  const promptImage = document.getElementById("sb-prompt-image"), references = document.getElementById("sb-references");

  function fill(select, items, keep) {
    const old = select.value;
    select.replaceChildren(...items.map(([value, label]) => {
      const o = el("option", null, label);
      o.value = value;
      return o;
    }));
    if (keep && items.some(([v]) => v === old)) select.value = old;
  }

  function short(text, n) {
    const one = text.replace(/\s+/g, " ").trim();
    return one.length > n ? one.slice(0, n - 1) + "…" : one;
  }

  function column(run, p, s) {
    const col = el("div", "sample-col");
    col.dataset.setting = run.settings[s];
    col.appendChild(el("h3", null, run.settings[s]));
    const scores = el("div", "scores");
    run.metrics.forEach((m, i) => {
      const item = el("span", null, m.split("[")[0] + " ");
      item.title = m;
      item.appendChild(el("b", null, fmt(run.scores[p][s][i])));
      scores.appendChild(item);
    });
    col.appendChild(scores);
    const list = el("ol", "samples");
    const images = run.samples[p][s].some((row) => row.length > 3);
    if (images) list.className = "samples images";
    run.samples[p][s].forEach(([text, tokens, finish, image], i) => {
      const li = el("li");
      if (typeof image === "string" && image.startsWith("data:image/jpeg;base64,")) {
        const img = el("img");
        img.src = image;
        img.alt = "image " + i + " of " + run.settings[s];
        li.appendChild(img);
      } else if (typeof image === "string") {  // beyond the report's size budget: where the image is
        li.appendChild(el("div", "not-inline", "not in the report (size budget): " + image));
      }
      if (text) li.appendChild(el("div", "text", text));
      const meta = ["#" + i];
      if (tokens !== null) meta.push(tokens + " tokens");
      if (finish) meta.push(finish);
      li.appendChild(el("div", "meta", meta.join(" · ")));
      list.appendChild(li);
    });
    col.appendChild(list);
    return col;
  }

  function renderSamples() {
    const run = data.runs[Number(runSel.value)];
    const p = Number(promptSel.value);
    const [, text, image, refs] = run.prompts[p];
    promptText.textContent = text;
    // image-to-text runs: the image the samples answer, and its reference captions
    const isImage = typeof image === "string" && image.startsWith("data:image/jpeg;base64,");
    promptImage.hidden = !isImage;
    if (isImage) {
      const img = el("img");
      img.src = image;
      img.alt = "the image of prompt " + run.prompts[p][0];
      promptImage.replaceChildren(img);
    } else promptImage.replaceChildren();
    references.replaceChildren(...(refs || []).map((r) => el("li", null, r)));
    references.hidden = !(refs && refs.length);
    bSel.disabled = !side.checked;
    const shown = [column(run, p, Number(aSel.value))];
    if (side.checked) shown.push(column(run, p, Number(bSel.value)));
    cols.replaceChildren(...shown);
  }

  function chooseRun() {
    const run = data.runs[Number(runSel.value)];
    fill(promptSel, run.prompts.map(([id, text], i) => [String(i), id + " — " + short(text, 70)]), false);
    const settings = run.settings.map((s, i) => [String(i), s]);
    fill(aSel, settings, true);
    fill(bSel, settings, true);
    if (bSel.value === aSel.value && settings.length > 1) bSel.value = String(settings.length - 1);
    renderSamples();
  }

  if (data.runs.length) {
    runSel.addEventListener("change", chooseRun);
    [promptSel, aSel, bSel, side].forEach((c) => c.addEventListener("change", renderSamples));
    chooseRun();
  }
})();
