//! RFC 2217's COM-PORT-OPTION: the commands a client sends in a
//! subnegotiation, and the server's answers, whose codes are the client's
//! plus 100.

/// The server answers a command with its code plus this.
pub const SERVER_OFFSET: u8 = 100;

pub const SIGNATURE: u8 = 0;
pub const SET_BAUDRATE: u8 = 1;
pub const SET_DATASIZE: u8 = 2;
pub const SET_PARITY: u8 = 3;
pub const SET_STOPSIZE: u8 = 4;
pub const SET_CONTROL: u8 = 5;
pub const NOTIFY_LINESTATE: u8 = 6;
pub const NOTIFY_MODEMSTATE: u8 = 7;
pub const FLOWCONTROL_SUSPEND: u8 = 8;
pub const FLOWCONTROL_RESUME: u8 = 9;
pub const SET_LINESTATE_MASK: u8 = 10;
pub const SET_MODEMSTATE_MASK: u8 = 11;
pub const PURGE_DATA: u8 = 12;

/// A client's command. A value of 0 in the `Set*` commands asks for the
/// current setting instead of changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Empty: the client asks for the server's signature; else its own.
    Signature(Vec<u8>),
    SetBaudRate(u32),
    SetDataSize(u8),
    SetParity(u8),
    SetStopSize(u8),
    SetControl(u8),
    /// The client polls the line or modem state.
    PollLineState,
    PollModemState,
    FlowControlSuspend,
    FlowControlResume,
    SetLineStateMask(u8),
    SetModemStateMask(u8),
    PurgeData(u8),
}

impl Request {
    /// Reads a COM-PORT-OPTION subnegotiation's data (its first byte is the
    /// command). `None` for an unknown command or a value of the wrong size.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let (&code, value) = data.split_first()?;
        let byte = || match value {
            [b] => Some(*b),
            _ => None,
        };
        Some(match code {
            SIGNATURE => Self::Signature(value.to_vec()),
            SET_BAUDRATE => Self::SetBaudRate(u32::from_be_bytes(value.try_into().ok()?)),
            SET_DATASIZE => Self::SetDataSize(byte()?),
            SET_PARITY => Self::SetParity(byte()?),
            SET_STOPSIZE => Self::SetStopSize(byte()?),
            SET_CONTROL => Self::SetControl(byte()?),
            NOTIFY_LINESTATE => Self::PollLineState,
            NOTIFY_MODEMSTATE => Self::PollModemState,
            FLOWCONTROL_SUSPEND => Self::FlowControlSuspend,
            FLOWCONTROL_RESUME => Self::FlowControlResume,
            SET_LINESTATE_MASK => Self::SetLineStateMask(byte()?),
            SET_MODEMSTATE_MASK => Self::SetModemStateMask(byte()?),
            PURGE_DATA => Self::PurgeData(byte()?),
            _ => return None,
        })
    }
}

/// `SET-PARITY` values.
pub mod parity {
    pub const NONE: u8 = 1;
    pub const ODD: u8 = 2;
    pub const EVEN: u8 = 3;
}

/// `SET-CONTROL` values.
pub mod control {
    pub const REQUEST_FLOW: u8 = 0;
    pub const FLOW_NONE: u8 = 1;
    pub const FLOW_XON_XOFF: u8 = 2;
    pub const FLOW_HARDWARE: u8 = 3;
    pub const REQUEST_BREAK: u8 = 4;
    pub const BREAK_ON: u8 = 5;
    pub const BREAK_OFF: u8 = 6;
    pub const REQUEST_DTR: u8 = 7;
    pub const DTR_ON: u8 = 8;
    pub const DTR_OFF: u8 = 9;
    pub const REQUEST_RTS: u8 = 10;
    pub const RTS_ON: u8 = 11;
    pub const RTS_OFF: u8 = 12;
    pub const REQUEST_INBOUND_FLOW: u8 = 13;
    pub const INBOUND_FLOW_NONE: u8 = 14;
    pub const INBOUND_FLOW_XON_XOFF: u8 = 15;
    pub const INBOUND_FLOW_HARDWARE: u8 = 16;
    /// DCD, DTR and DSR flow control (17–19): not offered by the tty driver.
    pub const FLOW_DCD: u8 = 17;
    pub const FLOW_DSR: u8 = 19;
}

/// `PURGE-DATA` values.
pub mod purge {
    pub const RECEIVE: u8 = 1;
    pub const TRANSMIT: u8 = 2;
    pub const BOTH: u8 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_wrong_sizes_do_not() {
        let cases: &[(&[u8], Option<Request>)] = &[
            (&[1, 0, 0, 0x25, 0x80], Some(Request::SetBaudRate(9600))),
            (&[1, 0, 0, 0], None),
            (&[1, 0, 0, 0, 0, 0], None),
            (&[2, 7], Some(Request::SetDataSize(7))),
            (&[2], None),
            (&[5, 8], Some(Request::SetControl(control::DTR_ON))),
            (&[5, 8, 9], None),
            (&[0], Some(Request::Signature(vec![]))),
            (&[0, b'h', b'i'], Some(Request::Signature(b"hi".to_vec()))),
            (&[7], Some(Request::PollModemState)),
            (&[12, 3], Some(Request::PurgeData(purge::BOTH))),
            (&[13, 1], None),
            (&[101, 0, 0, 0, 0], None),
            (&[], None),
        ];
        for (data, expected) in cases {
            assert_eq!(&Request::parse(data), expected, "{data:?}");
        }
    }
}
