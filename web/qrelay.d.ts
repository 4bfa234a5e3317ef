// Types of qrelay.js (the WebTransport client) and codec.js. See docs/PROTOCOL.md.

export interface User {
  id: string;
  name: string;
}

/** A received broadcast, barrage or command. */
export interface ReceivedMessage {
  /** Per-room message ID (broadcasts: 1, 2, 3, …). */
  id: number;
  /** When the relay accepted it, ms since the Unix epoch (relay clock). */
  sentAtMs: number;
  from: User;
  payload: Uint8Array;
  /** The payload as UTF-8 (invalid sequences replaced). */
  text: string;
}

export interface ConnectOptions {
  /** `https://HOST:PORT/qrelay`. */
  url: string;
  /**
   * SHA-256 of a short-lived development certificate: 64 hex characters or 32 bytes (anything
   * else is refused with a TypeError); omit for a trusted one.
   */
  serverCertificateHashes?: Array<string | Uint8Array>;
  user: { id: string; name?: string };
  /** Default 5000. */
  requestTimeoutMs?: number;
  /** Reconnect and recover when the connection is lost. Default true. */
  reconnect?: boolean;
  /**
   * How long to keep reconnecting, in ms. Default 120000. Attempts wait 100 ms, then twice as
   * long each time, at most 2000 ms.
   */
  reconnectForMs?: number;
  /** A fresh token for a room at each reconnect (else the last one is reused). */
  getToken?: (room: string) => Promise<string>;
  /** New `url` / `serverCertificateHashes` before each reconnect (a renewed certificate). */
  refresh?: () => Promise<Partial<ConnectOptions>>;
  /** A WebTransport implementation (default `globalThis.WebTransport`). */
  WebTransport?: unknown;
}

export interface ClientEvents {
  broadcast: { room: string; messages: ReceivedMessage[] };
  /** One event per datagram: `messages` holds one message. */
  barrage: { room: string; messages: ReceivedMessage[] };
  command: { room: string; message: ReceivedMessage };
  usersjoined: { room: string; users: User[] };
  usersleft: { room: string; users: User[] };
  /**
   * After a login again (PROTOCOL.md section 7, "Recovery"). `missed`: broadcasts no longer in
   * the room's history (lost); `restarted`: the lane's epoch differs from the one the client
   * had, the room was created anew on the relay (`complete` is then false; with `missed` null
   * no message is known to be missed, and the replay is the new room's history).
   */
  recovered: {
    room: string;
    complete: boolean;
    missed: [number, number] | null;
    replayed: number;
    restarted: boolean;
  };
  roomclosed: { room: string; code: number; error: string; detail: string };
  connectionstate:
    | { state: "reconnecting"; attempt: number }
    | { state: "reconnected" }
    | { state: "failed"; reason: string };
  tokenwillexpire: { expiresAtMs: number };
  /** A large room's login: its member count and the first page of the others. */
  memberpage: { room: string; count: number; users: User[]; next: bigint };
  /** A large room's member count after joins and leaves (which it does not name). */
  membercount: { room: string; count: number };
  disconnected: { code: number | null; reason: string };
}

/** A refused or failed operation. */
export class QrelayError extends Error {
  /** PROTOCOL.md section 11. */
  code: number;
  /** The code's name, e.g. `TOKEN_INVALID`. */
  error: string;
  detail: string;
}

export class Client extends EventTarget {
  readonly user: User;
  on<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): () => void;
  loginRoom(room: string, token: string): Promise<{ roomNumber: number; session: number }>;
  logoutRoom(room: string): Promise<void>;
  sendBroadcastMessage(room: string, message: string | Uint8Array): Promise<number>;
  sendBarrageMessage(room: string, message: string | Uint8Array): Promise<number>;
  sendBarrageMessageNoReply(room: string, message: string | Uint8Array): Promise<void>;
  sendCustomCommand(room: string, message: string | Uint8Array, to?: string[]): Promise<number>;
  renewToken(token: string): Promise<void>;
  /** One page of the member list (`next` 0n after the last); `limit` 0: the most (200). */
  fetchMembers(
    room: string,
    cursor?: bigint,
    limit?: number,
  ): Promise<{ count: number; users: User[]; next: bigint }>;
  close(): void;
}

export function connect(options: ConnectOptions): Promise<Client>;

/**
 * Reads a page listener's /config.json: `url`, `serverCertificateHashes`, `devTokens`. Rejects
 * naming the URL when the listener cannot be reached or answers with an error status.
 */
export function pageConnectOptions(
  base?: string | URL | Location,
  port?: string | number,
): Promise<{ url: string; serverCertificateHashes: string[]; devTokens: boolean }>;

export const ErrorCode: Readonly<Record<string, number>>;
export const CloseCode: Readonly<Record<string, number>>;
export function codeName(code: number): string;
