// What each client script prints: one JSON object, each step's result or the error it raised.
export const out = {};

export async function step(name, call) {
  try {
    out[name] = await call();
  } catch (e) {
    // openai: status, code; ollama: status_code, error
    out[name] = { error: String(e.message), status: e.status ?? e.status_code ?? null, code: e.code ?? null };
  }
}
