#!/usr/bin/env node
// Production entry point: runs the compiled commands under dist/ (npm run build).
import { execute } from '@oclif/core';

await execute({ dir: import.meta.url });
