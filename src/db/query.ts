/** The first row of an awaited query, or undefined: what SQLite's `.get()` gave, on any backend. */
export async function first<T>(query: PromiseLike<T[]>): Promise<T | undefined> {
  return (await query)[0];
}

/** The row an insert or update `.returning()` touched, when it must have touched one. */
export async function only<T>(query: PromiseLike<T[]>): Promise<T> {
  const [row] = await query;
  if (row === undefined) throw new Error('the statement touched no row');
  return row;
}
