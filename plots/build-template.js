// Writes template.html, the page `dvc plots show` and `dvc plots diff` fill (.dvc/config names it):
// DVC's own page loads Vega from a CDN and draws nothing offline, so this one carries the scripts.
// Run by `npm ci` (postinstall); `node build-template.js` rebuilds it.
"use strict";
const fs = require("fs");
const path = require("path");

const scripts = ["vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js",
  "vega-embed/build/vega-embed.min.js"];

function inline(file) {
  const code = fs.readFileSync(path.join(__dirname, "node_modules", file), "utf8");
  // A literal "</script" inside the code would end the inline <script> element early.
  return `<script>/* ${file} */\n${code.replace(/<\/script/gi, "<\\/script")}\n</script>`;
}

const page = `<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
${scripts.map(inline).join("\n")}
<style>table { border-spacing: 15px; }</style>
</head>
<body>
{plot_divs}
</body>
</html>
`;
// DVC replaces these placeholders anywhere in the page: none may appear inside the scripts.
for (const placeholder of ["{plot_divs}", "{scripts}", "{refresh_tag}"]) {
  const count = page.split(placeholder).length - 1;
  if (count > (placeholder === "{scripts}" ? 0 : 1)) {
    throw new Error(`${placeholder} occurs ${count} times in the page`);
  }
}
const out = path.join(__dirname, "template.html");
fs.writeFileSync(`${out}.tmp`, page);
fs.renameSync(`${out}.tmp`, out);
console.log(`wrote ${out} (${(page.length / 1e6).toFixed(1)} MB)`);
