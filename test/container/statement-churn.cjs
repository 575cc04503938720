// Prepares 200,000 statements and drops them, so that V8 frees them in collections outside JavaScript: with a
// better-sqlite3 addon compiled against Node 24.19+'s headers this aborts the process ("Assertion failed:
// (env) != nullptr", nodejs/node#65446), as it aborted the server after its first large upload. Prints "survived".
const Database = require('better-sqlite3');

const db = new Database(':memory:');
let statements = [];
for (let i = 0; i < 200000; i++) {
  statements.push(db.prepare('select ? as v').bind(i));
  if (statements.length > 1000) statements = [];
}
setTimeout(() => console.log('survived'), 100);
