// The API reference at /docs: reads this gateway's /openapi.json and lists every route with its
// parameters, request body and answers, then the schemas. Text only (no HTML from the
// document), nothing from another host.

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function refName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `array of ${refName(schema.items)}`;
  return schema.type || "object";
}

function anchor(method, path) {
  return `${method}-${path}`.replace(/[^A-Za-z0-9_-]/g, "-");
}

function route(method, path, op) {
  const box = el("section", undefined, "route");
  box.id = anchor(method, path);
  const head = el("h3");
  head.append(el("span", method.toUpperCase(), "method"), el("span", path, "path"));
  box.append(head);
  if (op.summary) box.append(el("p", op.summary));
  if (op.description && op.description !== op.summary) box.append(el("p", op.description));
  const facts = el("dl");
  const add = (term, value) => { facts.append(el("dt", term), el("dd", value)); };
  for (const p of op.parameters || []) {
    add(`${p.in} ${p.name}${p.required ? " (required)" : ""}`,
        `${refName(p.schema)}${p.description ? ` — ${p.description}` : ""}`);
  }
  const body = op.requestBody && op.requestBody.content;
  if (body) {
    for (const [type, media] of Object.entries(body)) add(`body (${type})`, refName(media.schema));
  }
  for (const [code, answer] of Object.entries(op.responses || {})) {
    const media = answer.content && Object.values(answer.content)[0];
    add(`answer ${code}`, `${answer.description || ""}${media ? ` — ${refName(media.schema)}` : ""}`);
  }
  box.append(facts);
  return box;
}

async function main() {
  const status = document.getElementById("status");
  let doc;
  try {
    const answer = await fetch("/openapi.json");
    doc = await answer.json();
  } catch (error) {
    status.textContent = `The OpenAPI document could not be read: ${error}`;
    return;
  }
  const title = `${doc.info.title} API, version ${doc.info.version}`;
  document.getElementById("title").textContent = title;
  document.title = title;
  const index = document.getElementById("index");
  const routes = document.getElementById("routes");
  let count = 0;
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      count += 1;
      routes.append(route(method, path, item[method]));
      const link = el("a", `${method.toUpperCase()} ${path}`);
      link.href = `#${anchor(method, path)}`;
      const entry = el("li");
      entry.append(link);
      index.append(entry);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
    const box = el("details", undefined, "schema");
    box.append(el("summary", name), el("pre", JSON.stringify(schema, null, 2)));
    schemas.append(box);
  }
  status.textContent = `${count} routes.`;
}

main();
