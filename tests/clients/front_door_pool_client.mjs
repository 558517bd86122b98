// The front door's pool of ports under the official ollama client: a flood of requests for
// several cold models at once, then a chat for each model the flood did not load:
// node front_door_pool_client.mjs BASE_URL FLOOD_PER_MODEL IDLE_MS MODEL...
// (IDLE_MS: the pause between the flood and the chats, for the pool's models to become idle).
// Prints one JSON object: each flood request's outcome by model, and after each later chat
// (chat_MODEL) the models /api/ps lists (ps_after_MODEL).
import { out, step } from './steps.mjs';
import { Ollama } from 'ollama';

const [base, perModel, idleMs, ...models] = process.argv.slice(2);
const ollama = new Ollama({ host: base });
const messages = [{ role: 'user', content: 'hi' }];
const chat = (model) => ollama.chat({ model, messages, options: { num_predict: 2 } });

// All at once: every model's requests interleaved.
const flood = [];
for (let i = 0; i < Number(perModel); i += 1) {
  for (const model of models) {
    flood.push(chat(model).then(() => ({ model, status: 200 }),
      (e) => ({ model, status: e.status_code ?? null, error: String(e.message) })));
  }
}
out.flood = await Promise.all(flood);
await step('ps_after_flood', async () => (await ollama.ps()).models.map((m) => m.name).sort());
// Then, once the pool's models have been idle a while, each model not loaded.
await new Promise((r) => setTimeout(r, Number(idleMs)));
for (const model of models.filter((m) => !out.ps_after_flood.includes(m))) {
  await step(`chat_${model}`, async () => (await chat(model)).done);
  await step(`ps_after_${model}`, async () => (await ollama.ps()).models.map((m) => m.name).sort());
}
console.log(JSON.stringify(out));
