// OpenAI's official JavaScript client against a port: node openai_client.mjs BASE_URL MODEL.
// Prints one JSON object: what each call returned (or the error it raised).
import { out, step } from './steps.mjs';
import OpenAI from 'openai';

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'none', maxRetries: 0 });
const messages = [{ role: 'user', content: 'hello' }];

await step('models', async () => (await client.models.list()).data);
await step('chat', () => client.chat.completions.create({ model, messages, max_tokens: 8 }));
await step('stream', async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  let chunks = 0;
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  return { chunks, text, usage };
});
await step('completion', () => client.completions.create({ model, prompt: 'once upon', max_tokens: 4 }));
await step('unknown_model', () => client.chat.completions.create({ model: 'gpt-4', messages }));
console.log(JSON.stringify(out));
