/** Server-rendered pages: tagged templates that escape every interpolated value unless it is already `Html`. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escape = (value: unknown): string => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]!);

export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  values.forEach((value, i) => {
    const parts = Array.isArray(value) ? value : [value];
    out += parts.map((v) => (v instanceof Html ? v.text : v === undefined || v === null || v === false ? '' : escape(v))).join('');
    out += strings[i + 1]!;
  });
  return new Html(out);
}

/** One page: system fonts, AA contrast, visible focus, nothing that needs JavaScript. */
export function page(title: string, body: Html, user?: { login: string; csrf: string }): string {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>${title} · preview-gate</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; color: #1b1f24; background: #fff; margin: 0; }
  header { display: flex; flex-wrap: wrap; gap: .5rem; justify-content: space-between; align-items: center; padding: .75rem 1.5rem; background: #24292f; color: #fff; }
  header a, header button { color: #fff; }
  main { max-width: 72rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
  h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
  h3 { font-size: 1.05rem; margin: 1.25rem 0 .25rem; }
  table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
  th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #d0d7de; vertical-align: top; }
  a { color: #0550ae; }
  .public { color: #116329; font-weight: 600; } .hidden { color: #953800; font-weight: 600; }
  button { font: inherit; padding: .3rem .8rem; border-radius: 6px; border: 1px solid #1b1f24; background: #f6f8fa; color: #1b1f24; cursor: pointer; }
  header button { background: transparent; border-color: #fff; }
  :focus-visible { outline: 3px solid #0969da; outline-offset: 2px; }
  /* On the dark header the blue ring is 2.5:1; white is 14.7:1 against #24292f (WCAG 2.2 wants 3:1). */
  header :focus-visible { outline-color: #fff; }
  /* 320 px wide (WCAG reflow): nothing makes the page scroll sideways; a wide table scrolls inside its own box. */
  .table-scroll { overflow-x: auto; max-width: 100%; }
  a, code { overflow-wrap: anywhere; }
  input, select { max-width: 100%; font: inherit; }
  @media (max-width: 30rem) { header, main { padding-left: .75rem; padding-right: .75rem; } }
  .note { color: #57606a; }
  form.inline { display: inline; }
  .avatar { vertical-align: middle; border-radius: 50%; }
  .fork { border: 1px solid #57606a; border-radius: 1em; padding: 0 .45em; font-size: .875em; }
  .pr-context { color: #57606a; margin: 0 0 .5rem; }
</style>
</head>
<body>
<header>
  <strong>preview-gate</strong>
  ${user ? html`<form class="inline" method="post" action="/logout"><span>Signed in as ${user.login}</span> <input type="hidden" name="csrf" value="${user.csrf}"> <button type="submit">Sign out</button></form>` : ''}
</header>
<main>
${body}
</main>
</body>
</html>
`.text;
}

export function signInPage(problem?: string): string {
  return page(
    'Sign in',
    html`<h1>Sign in</h1>
${problem ? html`<p role="alert"><strong>${problem}</strong></p>` : ''}
<p>Maintainers sign in with GitHub to see hidden previews of the repositories they can push to, and to publish or hide them.</p>
<p><a href="/login">Sign in with GitHub</a></p>`,
  );
}

export function problemPage(title: string, sentence: string): string {
  return page(title, html`<h1>${title}</h1><p role="alert">${sentence}</p><p><a href="/">Back to the dashboard</a></p>`);
}
