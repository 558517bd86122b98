// Ollama's official JavaScript client against a port: node ollama_client.mjs URL MODEL.
// Prints one JSON object: what each call returned (or the error it raised).
import { out, step } from './steps.mjs';
import { Ollama } from 'ollama';

const [host, model] = process.argv.slice(2);
const ollama = new Ollama({ host });
const messages = [{ role: 'user', content: 'hello' }];

await step('version', () => ollama.version());
await step('list', () => ollama.list());
await step('show', () => ollama.show({ model }));
await step('ps', () => ollama.ps());
await step('chat', () => ollama.chat({ model, messages, stream: false, options: { num_predict: 8, seed: 7, temperature: 0 } }));
await step('chat_stream', async () => {
  const parts = [];
  for await (const part of await ollama.chat({ model, messages, stream: true, options: { num_predict: 8 } })) parts.push(part);
  return { parts: parts.length, text: parts.map((p) => p.message.content).join(''), last: parts[parts.length - 1] };
});
await step('generate', () => ollama.generate({ model: `${model}:latest`, prompt: 'once upon', stream: false, options: { num_predict: 4 } }));
await step('generate_stream', async () => {
  const parts = [];
  for await (const part of await ollama.generate({ model, prompt: 'once upon', stream: true, options: { num_predict: 4 } })) parts.push(part);
  return { parts: parts.length, last: parts[parts.length - 1] };
});
await step('json_format', () => ollama.chat({ model, messages, format: 'json', stream: false, options: { num_predict: 4 } }));
await step('unknown_model', () => ollama.chat({ model: 'no-such-model', messages, stream: false }));
await step('pull', () => ollama.pull({ model, stream: false }));
await step('embed', () => ollama.embed({ model, input: 'hello' }));
console.log(JSON.stringify(out));
