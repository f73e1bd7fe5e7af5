import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  {
    ignores: [
      'dist/',
      'node_modules/',
      'bench-results/',
      'proto/generated/',
      'fs/fuse/native/build/',
    ],
  },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // An unused name prefixed with _ is deliberate (an interface's argument, a skipped value).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
    },
  },
  {
    // The daemon logs through pino only; CLI commands print through oclif's this.log.
    files: ['fs/**', 'agent/**', 'cluster/**', 'cli/**'],
    rules: { 'no-console': 'error' },
  },
  {
    // Plain JS entry points and configs are outside tsconfig.json: lint them without types.
    files: ['**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
