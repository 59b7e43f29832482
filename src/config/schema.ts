/**
 * Every configuration key, its default and its meaning. The TOML file and
 * the command line both land here; an unknown key or a bad value is an error
 * that names the key.
 */
import { z } from 'zod';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'must be HOST:PORT')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

const positiveInt = z.number().int().positive();

export const LogLevel = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export const ServeSection = z
  .object({
    /** Raw image file to serve. */
    image: z.string().min(1).optional(),
    /** Export name; defaults to the image's base name. */
    export: z.string().min(1).max(4096).optional(),
    /** Export description sent with NBD_INFO_DESCRIPTION. */
    description: z.string().max(4096).default(''),
    /** TCP address to listen on. */
    listen: hostPort.default('127.0.0.1:10809'),
    /** Unix socket path to listen on instead of TCP. */
    socket: z.string().min(1).optional(),
    /** Refuse writes, trims and zeroes with EPERM. */
    read_only: z.boolean().default(false),
  })
  .strict();

export const NbdSection = z
  .object({
    /** Requests one connection may have in flight before the server stops reading from it. */
    max_in_flight_requests: positiveInt.max(4096).default(64),
    /** Bytes of READ/WRITE payload one connection may have in flight. */
    max_in_flight_bytes: positiveInt.min(1 << 20).default(64 << 20),
    /** Largest READ or WRITE a client may send (also advertised as the maximum block size). */
    max_request_bytes: positiveInt
      .min(4096)
      .max(1 << 30)
      .default(32 << 20),
    /** A client must finish the handshake within this time. */
    handshake_timeout_ms: positiveInt.default(30_000),
  })
  .strict();

export const LogSection = z
  .object({
    level: LogLevel.default('info'),
  })
  .strict();

export const ConfigSchema = z
  .object({
    serve: ServeSection.default(ServeSection.parse({})),
    nbd: NbdSection.default(NbdSection.parse({})),
    log: LogSection.default(LogSection.parse({})),
  })
  .strict();

export type FerryConfig = z.infer<typeof ConfigSchema>;
