//! Telnet's byte layer (RFC 854, 855) as RFC 2217 uses it: data with IAC
//! doubled, option negotiation, and subnegotiations held to a fixed size.
//! Every byte sequence decodes to something; nothing a peer sends can grow
//! the decoder's memory past [`MAX_SUBNEGOTIATION`].

pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
pub const SB: u8 = 250;
pub const SE: u8 = 240;

/// Options this server takes part in.
pub const BINARY: u8 = 0;
pub const ECHO: u8 = 1;
pub const SUPPRESS_GO_AHEAD: u8 = 3;
pub const COM_PORT_OPTION: u8 = 44;

/// The longest subnegotiation kept: RFC 2217's longest is a signature, text
/// a person reads. Longer ones are dropped whole.
pub const MAX_SUBNEGOTIATION: usize = 256;

/// DO, DONT, WILL or WONT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Do,
    Dont,
    Will,
    Wont,
}

impl Verb {
    fn of(byte: u8) -> Option<Self> {
        match byte {
            DO => Some(Self::Do),
            DONT => Some(Self::Dont),
            WILL => Some(Self::Will),
            WONT => Some(Self::Wont),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Do => DO,
            Self::Dont => DONT,
            Self::Will => WILL,
            Self::Wont => WONT,
        }
    }
}

/// What the peer said besides data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Negotiate(Verb, u8),
    /// A whole subnegotiation: its option and data, IACs undoubled.
    Subnegotiation(u8, Vec<u8>),
    /// A subnegotiation longer than [`MAX_SUBNEGOTIATION`], dropped.
    Oversized(u8),
    /// A one-byte command: NOP, break, go ahead, or a code Telnet lacks.
    Command(u8),
    /// IAC SE with no subnegotiation open, or a subnegotiation cut short by
    /// IAC and something other than SE or IAC.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    Verb(Verb),
    SubOption,
    Sub,
    SubIac,
}

/// Splits a client's bytes into data for the device and Telnet events; keeps
/// its place between reads.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    option: u8,
    sub: Vec<u8>,
    oversized: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            state: State::Data,
            option: 0,
            sub: Vec::new(),
            oversized: false,
        }
    }
}

impl Decoder {
    /// True when `input` is plain data to this decoder: no Telnet in it and
    /// none begun before it.
    pub fn passes_through(&self, input: &[u8]) -> bool {
        self.state == State::Data && !input.contains(&IAC)
    }

    /// Appends the data in `input` to `data` and what else it holds to
    /// `events`.
    pub fn decode(&mut self, input: &[u8], data: &mut Vec<u8>, events: &mut Vec<Event>) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.state == State::Data {
                // The common case: a run of plain bytes, copied at once.
                let run = rest.iter().position(|&b| b == IAC).unwrap_or(rest.len());
                data.extend_from_slice(&rest[..run]);
                rest = &rest[run..];
                if let Some((_, tail)) = rest.split_first() {
                    self.state = State::Iac;
                    rest = tail;
                }
                continue;
            }
            let Some((&byte, tail)) = rest.split_first() else {
                break;
            };
            rest = tail;
            self.state = match self.state {
                State::Data => State::Data,
                State::Iac => self.after_iac(byte, data, events),
                State::Verb(verb) => {
                    events.push(Event::Negotiate(verb, byte));
                    State::Data
                }
                State::SubOption => {
                    self.option = byte;
                    self.sub.clear();
                    self.oversized = false;
                    State::Sub
                }
                State::Sub if byte == IAC => State::SubIac,
                State::Sub => {
                    self.push_sub(byte);
                    State::Sub
                }
                State::SubIac => match byte {
                    IAC => {
                        self.push_sub(IAC);
                        State::Sub
                    }
                    SE => {
                        events.push(if self.oversized {
                            Event::Oversized(self.option)
                        } else {
                            Event::Subnegotiation(self.option, std::mem::take(&mut self.sub))
                        });
                        self.sub = Vec::new();
                        State::Data
                    }
                    // The subnegotiation was never closed: drop it and read
                    // the byte as the command it is.
                    other => {
                        events.push(Event::Malformed);
                        self.sub = Vec::new();
                        self.after_iac(other, data, events)
                    }
                },
            };
        }
    }

    fn after_iac(&mut self, byte: u8, data: &mut Vec<u8>, events: &mut Vec<Event>) -> State {
        if let Some(verb) = Verb::of(byte) {
            return State::Verb(verb);
        }
        match byte {
            IAC => {
                data.push(IAC);
                State::Data
            }
            SB => State::SubOption,
            SE => {
                events.push(Event::Malformed);
                State::Data
            }
            other => {
                events.push(Event::Command(other));
                State::Data
            }
        }
    }

    fn push_sub(&mut self, byte: u8) {
        if self.sub.len() < MAX_SUBNEGOTIATION {
            self.sub.push(byte);
        } else {
            self.oversized = true;
        }
    }
}

/// Appends `data` to `out` with every IAC doubled.
pub fn escape(data: &[u8], out: &mut Vec<u8>) {
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| b == IAC) {
        out.extend_from_slice(&rest[..=at]);
        out.push(IAC);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Appends IAC `verb` `option`.
pub fn negotiate(verb: Verb, option: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, verb.code(), option]);
}

/// Appends IAC SB `option` `payload` IAC SE, escaping the payload.
pub fn subnegotiate(option: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, SB, option]);
    escape(payload, out);
    out.extend_from_slice(&[IAC, SE]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut decoder = Decoder::default();
        let (mut data, mut events) = (Vec::new(), Vec::new());
        for chunk in chunks {
            decoder.decode(chunk, &mut data, &mut events);
        }
        (data, events)
    }

    /// Each case: input, the data it holds, the events it holds.
    #[test]
    fn byte_sequences_decode_to_data_and_events() {
        use Event::*;
        let cases: &[(&[u8], &[u8], Vec<Event>)] = &[
            (b"plain", b"plain", vec![]),
            (&[1, IAC, IAC, 2], &[1, IAC, 2], vec![]),
            (
                &[b'a', IAC, WILL, COM_PORT_OPTION, b'b'],
                b"ab",
                vec![Negotiate(Verb::Will, COM_PORT_OPTION)],
            ),
            (
                &[IAC, SB, 44, 1, 0, 0, 0x25, 0x80, IAC, SE],
                b"",
                vec![Subnegotiation(44, vec![1, 0, 0, 0x25, 0x80])],
            ),
            (
                &[IAC, SB, 44, 0, b'x', IAC, IAC, b'y', IAC, SE, b'z'],
                b"z",
                vec![Subnegotiation(44, vec![0, b'x', IAC, b'y'])],
            ),
            (&[IAC, 241, b'q'], b"q", vec![Command(241)]),
            (&[IAC, SE, b'q'], b"q", vec![Malformed]),
            // An unclosed subnegotiation ends at the next command.
            (
                &[IAC, SB, 44, 1, 2, IAC, DO, BINARY, b'k'],
                b"k",
                vec![Malformed, Negotiate(Verb::Do, BINARY)],
            ),
            // IAC SB IAC SE: option 255, empty.
            (
                &[IAC, SB, IAC, IAC, SE],
                b"",
                vec![Subnegotiation(IAC, vec![])],
            ),
        ];
        for (input, data, events) in cases {
            // What passes through untouched decodes to itself.
            assert_eq!(
                Decoder::default().passes_through(input),
                !input.contains(&IAC),
                "{input:?}"
            );
            // Whole, and one byte a read: the split must not matter.
            let whole = decode_all(&[input]);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let split = decode_all(&bytes);
            assert_eq!(whole, (data.to_vec(), events.clone()), "{input:?}");
            assert_eq!(split, whole, "{input:?} a byte at a time");
        }
    }

    #[test]
    fn a_subnegotiation_that_never_ends_stays_within_its_cap() {
        let mut decoder = Decoder::default();
        let (mut data, mut events) = (Vec::new(), Vec::new());
        decoder.decode(&[IAC, SB, 44, 0], &mut data, &mut events);
        let flood = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            decoder.decode(&flood, &mut data, &mut events);
        }
        assert!(decoder.sub.capacity() <= 2 * MAX_SUBNEGOTIATION);
        decoder.decode(&[IAC, SE, b'd'], &mut data, &mut events);
        assert_eq!(events, vec![Event::Oversized(44)]);
        assert_eq!(data, b"d", "data flows again after it");
        assert!(decoder.passes_through(b"plain"));
        decoder.decode(&[IAC], &mut data, &mut events);
        assert!(
            !decoder.passes_through(b"plain"),
            "a command begun in the last read"
        );
    }

    #[test]
    fn escaping_doubles_iac_and_decodes_back() {
        let data: Vec<u8> = (0..=255).chain([IAC, IAC]).collect();
        let mut wire = Vec::new();
        escape(&data, &mut wire);
        assert_eq!(wire.len(), data.len() + 3);
        assert_eq!(decode_all(&[&wire]), (data, vec![]));

        let mut wire = Vec::new();
        subnegotiate(44, &[101, IAC, 7], &mut wire);
        assert_eq!(wire, [IAC, SB, 44, 101, IAC, IAC, 7, IAC, SE]);
    }
}
