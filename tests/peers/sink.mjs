// A tiny SMTP sink: Dovecot submission's relay in the peer tests. It accepts
// any session and swallows messages; mailconnect's verify route sends none.
import net from 'node:net';

const port = Number(process.argv[2] || 2525);
net.createServer((socket) => {
  let data = false;
  let buf = '';
  const say = (line) => socket.write(`${line}\r\n`);
  say('220 sink.test ESMTP sink');
  socket.on('data', (chunk) => {
    buf += chunk.toString('latin1');
    let i;
    while ((i = buf.indexOf('\r\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (data) {
        if (line === '.') { data = false; say('250 2.0.0 accepted'); }
        continue;
      }
      const verb = line.slice(0, 4).toUpperCase();
      if (verb === 'EHLO') { say('250-sink.test'); say('250-8BITMIME'); say('250 PIPELINING'); }
      else if (verb === 'DATA') { data = true; say('354 go ahead'); }
      else if (verb === 'QUIT') { say('221 2.0.0 bye'); socket.end(); }
      else say('250 2.0.0 ok');
    }
  });
  socket.on('error', () => {});
}).listen(port, '127.0.0.1');
