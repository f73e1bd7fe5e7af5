#!/usr/bin/env -S node --import tsx
// Development entry point: runs the TypeScript sources through tsx, no build needed. tsx is
// loaded here rather than by oclif so that require.resolve finds .ts files too; otherwise oclif
// warns that it cannot map the sources.
import { execute } from '@oclif/core';

await execute({ development: true, dir: import.meta.url });
