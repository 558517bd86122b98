// Both official JavaScript clients against the front door, as a user's tools would use one URL
// for the whole fleet: node front_door_client.mjs BASE_URL WARM_MODEL COLD_MODEL.
// WARM_MODEL is loaded; COLD_MODEL is loaded on demand by the first request naming it, unloaded
// by keep_alive 0 and loaded again.
// Prints one JSON object: what each call returned (or the error it raised).
import { out, step } from './steps.mjs';
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const [base, warm, cold] = process.argv.slice(2);
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0, timeout: 120000 });
const ollama = new Ollama({ host: base });
const messages = [{ role: 'user', content: 'hello' }];

async function openaiStream(model) {
  const stream = await openai.chat.completions.create({ model, messages, max_tokens: 8, stream: true });
  let chunks = 0;
  let text = '';
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  return { chunks, text };
}

async function ollamaStream(model) {
  const parts = await ollama.chat({ model, messages, stream: true, options: { num_predict: 8 } });
  let count = 0;
  let text = '';
  let last = null;
  for await (const part of parts) {
    count += 1;
    text += part.message?.content ?? '';
    last = part;
  }
  return { parts: count, text, last };
}

await step('models_before', async () => (await openai.models.list()).data);
await step('tags', () => ollama.list());
await step('ps_before', () => ollama.ps());
await step('warm_chat', () => openai.chat.completions.create({ model: warm, messages, max_tokens: 8 }));
await step('warm_stream', () => openaiStream(warm));
const coldStart = Date.now();
await step('cold_stream', () => openaiStream(cold));
out.cold_ms = Date.now() - coldStart;
await step('models_after', async () => (await openai.models.list()).data);
await step('ollama_chat_stream', () => ollamaStream(`${cold}:latest`));
await step('ollama_generate', () => ollama.generate({ model: warm, prompt: 'once upon', stream: false, options: { num_predict: 4 } }));
await step('ollama_show', () => ollama.show({ model: cold }));
await step('ps_after', () => ollama.ps());
// keep_alive: how long the model stays once idle (0: unloaded after the request; -1: kept).
async function psEntry(model) {
  return (await ollama.ps()).models.find((m) => m.name === model) ?? null;
}
async function untilUnloaded(model) {
  const start = Date.now();
  while ((await psEntry(model)) !== null && Date.now() - start < 20000) {
    await new Promise((r) => setTimeout(r, 100));
  }
  return { unloaded: (await psEntry(model)) === null, ms: Date.now() - start };
}
const expiresIn = (entry) => (entry ? (Date.parse(entry.expires_at) - Date.now()) / 1000 : null);
await step('unload', () => ollama.generate({ model: cold, prompt: '', keep_alive: 0 }));
await step('after_unload', () => untilUnloaded(cold));
await step('unload_again', () => ollama.chat({ model: cold, messages: [], keep_alive: '0s' }));
await step('models_after_unload', async () => (await openai.models.list()).data.find((m) => m.id === cold));
// The model's /api/ps entry once `wanted` holds of it (or after 5 s): ensembled hears of a
// keep_alive once the answer is sent, and /api/ps shows it a moment later.
async function psEntryOnce(model, wanted) {
  const start = Date.now();
  let entry = await psEntry(model);
  while (!(entry && wanted(entry)) && Date.now() - start < 5000) {
    await new Promise((r) => setTimeout(r, 50));
    entry = await psEntry(model);
  }
  return entry;
}
await step('keep_5m', async () => {
  await ollama.chat({ model: cold, messages, keep_alive: '5m', options: { num_predict: 2 } });
  return { expires_in_s: expiresIn(await psEntryOnce(cold, (e) => expiresIn(e) <= 301)) };
});
await step('keep_forever', async () => {
  await ollama.generate({ model: cold, prompt: 'hi', keep_alive: -1, options: { num_predict: 2 } });
  const forever = (e) => e.expires_at.startsWith('2318');
  return (await psEntryOnce(cold, forever))?.expires_at ?? null;
});
await step('bad_keep_alive', () => ollama.chat({ model: cold, messages, keep_alive: 'soon' }));
await step('over_budget', () => openai.chat.completions.create({ model: 'tiny-huge', messages }));
await step('ollama_over_budget', () => ollama.chat({ model: 'tiny-huge', messages }));
await step('unknown_model', () => openai.chat.completions.create({ model: 'gpt-4', messages }));
await step('ollama_unknown_model', () => ollama.chat({ model: 'llama3', messages }));
await step('pull', () => ollama.pull({ model: 'llama3' }));
console.log(JSON.stringify(out));
